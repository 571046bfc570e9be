/* port.c - one breath of a guest port: guest TX vring -> rings to other
 * ports, rings from other ports -> guest RX vring; and the worker loop of
 * every port kind (sv3_port_run/poll/arm dispatch on sv3_port.kind).
 * Python calls sv3_port_poll() (breaths, yields and control polls in one
 * C call), never per frame.
 *
 * Copy budget: guest TX buffer -> ring record (1 copy per destination),
 * ring record -> guest RX buffer (1 copy).  Source frames are read-only.
 */
#include <poll.h>
#include <sched.h>
#include <time.h>
#include "vring.h"

#define RX_MAX_SEGS 256       /* buffers per frame written to a guest */

static void broke(struct sv3_port *p, uint32_t vring, int reason)
{
    if (!p->broken) {
        p->broken = (uint8_t)reason;
        p->broken_vring = (uint8_t)vring;
    }
}

/* One guest TX frame (its chain already walked) to its destination(s).
 * Returns 1 if it must stay in the guest's vring for now (sv3_forward). */
static int forward_chain(struct sv3_port *p, const struct sv3_seg *segs, uint32_t nsegs, uint64_t total)
{
    uint8_t hdr[12 + 14];
    struct sv3_frame meta = {0};
    uint32_t hl = p->hdr_len, flen;

    if (total < hl + 14) {
        p->ctr->drop_runt++;
        return 0;
    }
    if (total - hl > SV3_MAX_FRAME) {
        p->ctr->drop_oversize++;
        return 0;
    }
    flen = (uint32_t)(total - hl);
    sv3_segs_copy(segs, nsegs, 0, hdr, hl + 14, 0);
    meta.gso_type = hdr[1];
    meta.len = flen;
    if (sv3_above_mtu(p, &meta)) {
        p->ctr->drop_oversize++;
        return 0;
    }
    if (!(hdr[0] & SV3_NET_HDR_F_NEEDS_CSUM) && !meta.gso_type)
        return sv3_forward(p, segs, nsegs, hl, flen, hdr + hl, &meta, 1);
    sv3_net_hdr_get(&meta, hdr);
    meta.flags &= SV3_NET_HDR_F_NEEDS_CSUM;          /* DATA_VALID is for the device to say */
    if (sv3_offload_check(p, &meta, flen)) {
        p->ctr->drop_bad_header++;
        return 0;
    }
    if (sv3_forward(p, segs, nsegs, hl, flen, hdr + hl, &meta, 1))
        return 1;
    p->ctr->offload_frames++;
    return 0;
}

/* One guest TX chain, walked one frame ahead of its forwarding so that the
 * cache misses on its descriptor and first buffer overlap the previous
 * frame's copy (the generator or guest wrote them from another CPU). */
struct tx_chain {
    struct sv3_seg segs[SV3_MAX_SEGS];
    uint32_t nsegs;
    int rc;                 /* 0, SV3_BROKEN_SEGS (legal: dropped) or broken */
    uint64_t total;
    uint16_t head;
};

static void tx_walk(struct sv3_port *p, struct sv3_vring *vr, uint16_t pos, struct tx_chain *c)
{
    uint32_t mask = vr->num - 1;
    uint16_t after = *avail_ring(vr, (uint16_t)(pos + 1) & mask);

    if (after < vr->num)    /* a hint only: stale or not, it is never dereferenced */
        __builtin_prefetch((const void *)(uintptr_t)(vr->desc + 16u * after));
    c->head = *avail_ring(vr, pos & mask);
    if (c->head >= vr->num) {
        c->rc = SV3_BROKEN_HEAD;
        return;
    }
    c->rc = sv3_walk_chain(p, vr, c->head, 0, c->segs, SV3_MAX_SEGS, &c->nsegs, &c->total);
    if ((c->rc == 0 || c->rc == SV3_BROKEN_SEGS) && c->nsegs) {
        __builtin_prefetch(c->segs[0].ptr);
        __builtin_prefetch(c->segs[0].ptr + 64);
    }
}

/* Guest TX: take up to batch chains, forward them, return them used. */
int sv3_tx_vring(struct sv3_port *p, struct sv3_vring *vr)
{
    struct tx_chain ch[2];
    uint32_t i, vi = (uint32_t)(vr - p->vr);
    uint16_t n;
    int rc;

    if (!vr->started || p->broken)
        return 0;
    rc = sv3_vring_pending(p, vr, &n);
    if (rc) {
        broke(p, vi, rc);
        return 0;
    }
    if (n > p->batch)
        n = p->batch;
    if (n)
        tx_walk(p, vr, vr->last_avail_idx, &ch[0]);
    for (i = 0; i < n; i++) {
        struct tx_chain *c = &ch[i & 1];
        if (c->rc && c->rc != SV3_BROKEN_SEGS) {
            broke(p, vi, c->rc);
            break;
        }
        if (i + 1 < n)
            tx_walk(p, vr, (uint16_t)(vr->last_avail_idx + 1), &ch[(i + 1) & 1]);
        if (c->rc == 0 && vr->enabled && forward_chain(p, c->segs, c->nsegs, c->total))
            break;              /* destination full: the chain stays, retried next breath */
        vr->last_avail_idx++;
        if (c->rc)
            p->ctr->drop_oversize++;                 /* legal, but more buffers than we gather */
        used_elem(vr, vr->used_idx & (vr->num - 1))->id = c->head;
        used_elem(vr, vr->used_idx & (vr->num - 1))->len = 0;
        vr->used_idx++;
    }
    sv3_store_release16(used_idx(vr), vr->used_idx);
    sv3_publish_all(p);
    sv3_vring_signal(p, vr);
    return (int)i;
}

/* Guest buffers for one frame of need bytes (header included).  Takes
 * chains from avail without consuming them.  Returns the number of chains
 * (0: not enough buffers now; -1: the frame can never fit; -2: broken). */
static int gather_rx(struct sv3_port *p, struct sv3_vring *vr, uint16_t avail, uint64_t need,
                     struct sv3_seg *segs, uint32_t *nsegs, uint16_t *heads, uint32_t *caps)
{
    uint32_t vi = (uint32_t)(vr - p->vr), k = 0, ns;
    uint64_t have = 0, cap;
    int rc;

    *nsegs = 0;
    while (have < need) {
        if (k > 0 && !p->mrg_rxbuf)
            return -1;
        if (k >= avail)
            return avail >= vr->num ? -1 : 0;   /* a full ring that cannot hold it: never */
        if (k >= RX_MAX_SEGS)
            return -1;
        uint16_t head = *avail_ring(vr, (uint16_t)(vr->last_avail_idx + k) & (vr->num - 1));
        if (head >= vr->num) {
            broke(p, vi, SV3_BROKEN_HEAD);
            return -2;
        }
        rc = sv3_walk_chain(p, vr, head, 1, segs + *nsegs, RX_MAX_SEGS - *nsegs, &ns, &cap);
        if (rc == SV3_BROKEN_SEGS)
            return -1;
        if (!rc && cap == 0)
            rc = SV3_BROKEN_EMPTY_RX;            /* zero-length buffers only */
        if (rc) {
            broke(p, vi, rc);
            return -2;
        }
        if (k == 0 && cap < p->hdr_len)
            return -1;   /* the header must fit in the first buffer (any layout) */
        *nsegs += ns;
        heads[k] = head;
        caps[k] = (uint32_t)(cap < need - have ? cap : need - have);
        have += cap;
        k++;
    }
    return (int)k;
}

/* Whether the guest takes a frame's metadata.  The sender looked at what
 * this port accepts (sv3_ring.accepts), but the guest may have negotiated
 * less since (a driver reload): a partial checksum is completed here, in
 * the ring record this port owns; a GSO frame is dropped. */
static int guest_takes(struct sv3_port *p, struct sv3_frame *f)
{
    if (!(sv3_offload_needs(f) & ~p->guest_offloads))
        return 1;
    if (f->gso_type || sv3_csum_complete((uint8_t *)(f + 1), f->len, f->csum_start, f->csum_offset))
        return 0;
    f->flags = SV3_NET_HDR_F_DATA_VALID;
    p->ctr->sw_checksummed++;
    return 1;
}

/* Write one frame from a ring into the gathered guest buffers. */
static void deliver(struct sv3_port *p, struct sv3_vring *vr, const struct sv3_frame *f,
                    const struct sv3_seg *segs, uint32_t nsegs, const uint16_t *heads,
                    const uint32_t *lens, int nchains)
{
    uint8_t hdr[12], flags = f->flags & SV3_NET_HDR_F_NEEDS_CSUM;
    int k;

    if ((f->flags & SV3_NET_HDR_F_DATA_VALID) && (p->guest_offloads & SV3_ACCEPT_CSUM))
        flags |= SV3_NET_HDR_F_DATA_VALID;          /* sv3 or the kernel checked it */
    sv3_net_hdr_put(hdr, f, flags);
    put_le16(hdr + 10, (uint16_t)nchains);         /* num_buffers (MRG_RXBUF, VERSION_1) */
    sv3_segs_copy(segs, nsegs, 0, hdr, p->hdr_len, 1);
    sv3_segs_copy(segs, nsegs, p->hdr_len, (uint8_t *)(f + 1), f->len, 1);
    for (k = 0; k < nchains; k++) {
        volatile struct vring_used_elem *u = used_elem(vr, vr->used_idx & (vr->num - 1));
        u->id = heads[k];
        u->len = lens[k];
        vr->used_idx++;
    }
    vr->last_avail_idx += (uint16_t)nchains;
    p->ctr->tx_frames++;
    p->ctr->tx_bytes += f->len;
}

/* The descriptors of the next guest RX chains, fetched before they are
 * walked (the guest refilled them from another CPU).  Hints only. */
static void prefetch_rx_descs(const struct sv3_vring *vr, uint16_t avail)
{
    uint16_t k, n = avail < 32 ? avail : 32;
    for (k = 0; k < n; k++) {
        uint16_t h = *avail_ring(vr, (uint16_t)(vr->last_avail_idx + k) & (vr->num - 1));
        if (h < vr->num)
            __builtin_prefetch((const void *)(uintptr_t)(vr->desc + 16u * h));
    }
}

/* Drain one inbound ring into the guest; returns frames handled, and
 * sets vr->rx_starved when the guest ran out of buffers. */
static int rx_ring(struct sv3_port *p, struct sv3_vring *vr, struct sv3_ring_cons *c, uint16_t *avail,
                   int *warm)
{
    static struct sv3_seg segs[RX_MAX_SEGS];   /* one data path per process */
    uint16_t heads[RX_MAX_SEGS];
    uint32_t lens[RX_MAX_SEGS], nsegs;
    const struct sv3_frame *f;
    int done = 0, k;

    while (done < p->batch && (f = sv3_ring_peek(c)) != NULL) {
        uint64_t *drop = sv3_above_mtu(p, f) ? &p->ctr->drop_oversize :
                         guest_takes(p, (struct sv3_frame *)f) ? NULL : &p->ctr->drop_bad_header;
        if (drop) {                  /* bad_header: offloads this guest dropped meanwhile */
            (*drop)++;
            sv3_ring_consume(c, f);
            done++;
            continue;
        }
        if (!*warm) {               /* once per breath, when there is a frame */
            prefetch_rx_descs(vr, *avail);
            *warm = 1;
        }
        k = gather_rx(p, vr, *avail, (uint64_t)p->hdr_len + f->len, segs, &nsegs, heads, lens);
        if (k == -2)
            break;
        if (k == 0) {
            vr->rx_starved = 1;                  /* wait for the guest to add buffers */
            vr->rx_starved_avail = (uint16_t)(vr->last_avail_idx + *avail);
            break;
        }
        if (k > 0) {
            deliver(p, vr, f, segs, nsegs, heads, lens, k);
            *avail -= (uint16_t)k;
        } else {
            p->ctr->drop_no_buffer++;    /* can never fit this guest's buffers */
        }
        sv3_ring_consume(c, f);
        done++;
    }
    sv3_ring_release(c);
    return done;
}

/* The running RX vrings (multiqueue: one per queue pair the guest enabled).
 * Inbound ring i goes to rxq[i % n]: one peer's frames stay in order. */
static uint32_t rx_queues(struct sv3_port *p, struct sv3_vring **rxq)
{
    uint32_t k, n = 0;
    for (k = 0; k < p->nvrings; k += 2)
        if (p->vr[k].started && p->vr[k].enabled)
            rxq[n++] = &p->vr[k];
    return n;
}

/* Inbound rings sel, sel + nsel, ... into one RX vring. */
int sv3_rx_vring(struct sv3_port *p, struct sv3_vring *vr, uint32_t sel, uint32_t nsel)
{
    uint32_t i, vi = (uint32_t)(vr - p->vr);
    uint16_t avail;
    int done = 0, rc, warm = 0;

    vr->rx_starved = 0;
    rc = sv3_vring_pending(p, vr, &avail);
    if (rc) {
        broke(p, vi, rc);
        return 0;
    }
    for (i = sel; i < p->nin && !p->broken && !vr->rx_starved; i += nsel)
        done += rx_ring(p, vr, &p->inb[i], &avail, &warm);
    p->rx_starved |= vr->rx_starved;
    if (done) {
        sv3_store_release16(used_idx(vr), vr->used_idx);
        sv3_vring_signal(p, vr);
    }
    return done;
}

/* One breath of a guest port: every TX vring, then the inbound rings. */
static int vhost_breath(struct sv3_port *p)
{
    struct sv3_vring *rxq[SV3_MAX_VRINGS / 2];
    uint32_t k, nq;
    int work = 0;

    for (k = 1; k < p->nvrings; k += 2)
        work += sv3_tx_vring(p, &p->vr[k]);
    p->rx_starved = 0;
    nq = rx_queues(p, rxq);
    if (!nq || p->broken)
        return work + sv3_discard_inbound(p, p->broken ? &p->ctr->drop_broken : &p->ctr->drop_no_buffer);
    for (k = 0; k < nq && !p->broken; k++)
        work += sv3_rx_vring(p, rxq[k], k, nq);
    return work;
}

/* Up to max_breaths breaths while there is work; returns frames moved. */
int sv3_port_run(struct sv3_port *p, uint32_t max_breaths)
{
    int total = 0, work;
    uint32_t b;

    for (b = 0; b < max_breaths; b++) {
        if (p->kind == SV3_KIND_AF_PACKET)
            work = sv3_afp_run(p);
        else if (p->kind == SV3_KIND_IXGBE)
            work = sv3_ixgbe_run(p);
        else
            work = vhost_breath(p);
        p->ctr->breaths++;
        total += work;
        if (!work || p->nlearn >= SV3_LEARN_MAX / 2 || p->broken)
            break;
    }
    return total;
}

static int control_ready(const struct sv3_port *p)
{
    struct pollfd pfd[SV3_MAX_WATCH];
    uint32_t i, n = p->nwatch < SV3_MAX_WATCH ? p->nwatch : SV3_MAX_WATCH;

    for (i = 0; i < n; i++) {
        pfd[i].fd = p->watch_fds[i];
        pfd[i].events = POLLIN;
        pfd[i].revents = 0;
    }
    return poll(pfd, n, 0) != 0;     /* ready, or an error Python should see */
}

/* The worker's loop between two visits of Python: breaths while there is
 * work; once idle, empty breaths for spin_ns (--poll-us), then breaths
 * separated by sched_yield() for yield_ns, so that a worker sharing the core
 * runs without an eventfd round trip.  The yield phase lasts at least
 * SV3_YIELDS_MIN yields: with many busy workers on the core one yield can
 * outlast yield_ns, and sleeping then costs more than another turn.
 * Returns SV3_POLL_IDLE (arm and
 * sleep; also when a vring broke), SV3_POLL_CONTROL (a control fd is
 * readable; they are looked at every budget_ns while busy, one poll()
 * call, without Python; also after SV3_CHECKS_PER_VISIT looks, so that
 * Python's housekeeping runs) or SV3_POLL_REPORT (MACs to report). */
int sv3_port_poll(struct sv3_port *p, uint64_t budget_ns, uint64_t spin_ns, uint64_t yield_ns)
{
    uint64_t start = sv3_now_ns(), t, last_work = start;
    uint32_t yields = 0, checks = 0;

    for (;;) {
        int work = sv3_port_run(p, 64);
        if (p->nlearn)
            return SV3_POLL_REPORT;
        if (p->broken)
            return SV3_POLL_IDLE;
        t = sv3_now_ns();
        if (work) {
            last_work = t;
            yields = 0;
        } else if ((t - last_work >= spin_ns + yield_ns && yields >= SV3_YIELDS_MIN) ||
                   (p->kind == SV3_KIND_VHOST && !(p->vr[0].started || p->vr[1].started))) {
            return SV3_POLL_IDLE;         /* nothing to wait for: a handshake goes on at once */
        } else if (t - last_work >= spin_ns) {
            p->ctr->yields++;
            yields++;
            sched_yield();
        }
        if (t - start >= budget_ns) {
            if (control_ready(p) || ++checks >= SV3_CHECKS_PER_VISIT)
                return SV3_POLL_CONTROL;
            start = t;
        }
    }
}

/* Before sleeping: ask for kicks and doorbells, then re-check every source
 * (a kick or frame that raced the arming is seen here).  1 = work pending.
 * An inbound ring whose RX vring is starved asks for no doorbell: only new
 * guest buffers (a kick on that vring) can help it. */
static int vhost_arm(struct sv3_port *p)
{
    struct sv3_vring *rxq[SV3_MAX_VRINGS / 2];
    uint32_t i, k, nq = rx_queues(p, rxq);
    uint16_t n;

    for (i = 0; i < p->nin; i++)
        if (!nq || !rxq[i % nq]->rx_starved)
            __atomic_store_n(&p->inb[i].ring->waiting, 1, __ATOMIC_RELAXED);
    for (k = 1; k < p->nvrings; k += 2)
        sv3_vring_set_kicks(p, &p->vr[k], 1);
    for (k = 0; k < nq; k++)
        if (rxq[k]->rx_starved)
            sv3_vring_set_kicks(p, rxq[k], 1);
    sv3_fence();
    for (k = 1; k < p->nvrings; k += 2)
        if (p->vr[k].started && (sv3_vring_pending(p, &p->vr[k], &n) || n))
            return 1;
    for (k = 0; k < nq; k++)   /* only new buffers can help, not the ones that were too few */
        if (rxq[k]->rx_starved && sv3_load_acquire16(avail_idx(rxq[k])) != rxq[k]->rx_starved_avail)
            return 1;
    for (i = 0; i < p->nin; i++)
        if ((!nq || !rxq[i % nq]->rx_starved) && !sv3_ring_empty(&p->inb[i]))
            return 1;
    return 0;
}

int sv3_port_arm(struct sv3_port *p)
{
    if (p->kind == SV3_KIND_AF_PACKET)
        return sv3_afp_arm(p);
    if (p->kind == SV3_KIND_IXGBE)
        return sv3_ixgbe_arm(p);
    if (p->broken)                   /* frames still come, to be discarded */
        return sv3_inbound_arm(p);
    return vhost_arm(p);
}

void sv3_port_disarm(struct sv3_port *p)
{
    uint32_t i;
    for (i = 0; i < p->nin; i++)
        __atomic_store_n(&p->inb[i].ring->waiting, 0, __ATOMIC_RELAXED);
    if (p->kind == SV3_KIND_VHOST)
        for (i = 0; i < SV3_MAX_VRINGS; i++)
            sv3_vring_set_kicks(p, &p->vr[i], 0);
    p->ctr->wakeups++;
}

/* Called by the SET_VRING_KICK handler once the ring is translated:
 * the used index comes from guest memory (vhost-user "Ring states"). */
int sv3_vring_start(struct sv3_port *p, uint32_t i)
{
    struct sv3_vring *vr;
    if (i >= SV3_MAX_VRINGS)
        return -1;
    vr = &p->vr[i];
    if (!vr->desc || !vr->avail || !vr->used || !vr->num)
        return -1;
    vr->used_idx = sv3_load_acquire16(used_idx(vr));
    vr->signalled_used = vr->used_idx;
    vr->started = 1;
    if (p->nvrings < (i | 1) + 1)
        p->nvrings = (uint8_t)((i | 1) + 1);    /* the whole pair: breaths look this far */
    sv3_vring_set_kicks(p, vr, 0);
    return 0;
}
