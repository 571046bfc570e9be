/* vring.c - walking split virtqueues in guest memory: descriptor chains,
 * address translation, copies, used-ring updates and notifications.
 * Written for the device side (virtio 1.1 2.6.13-2.6.14, vhost-user spec
 * "Ring states"); the front-end and the guest own these rings. */
#include <unistd.h>
#include "vring.h"

/* Translate [gpa, gpa+len) to local memory; may return less than len when
 * the buffer continues in the next region.  0 on success. */
static int gpa_chunk(const struct sv3_port *p, uint64_t gpa, uint64_t len, uint8_t **host, uint64_t *chunk)
{
    uint32_t i;
    for (i = 0; i < p->nregions; i++) {
        const struct sv3_region *r = &p->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size) {
            uint64_t room = r->size - (gpa - r->gpa);
            *host = (uint8_t *)(uintptr_t)(r->host + (gpa - r->gpa));
            *chunk = len < room ? len : room;
            return 0;
        }
    }
    return -1;
}

static int add_segs(struct sv3_port *p, uint64_t addr, uint32_t len,
                    struct sv3_seg *segs, uint32_t maxsegs, uint32_t *nsegs)
{
    uint64_t left = len;
    while (left) {
        uint8_t *host;
        uint64_t chunk;
        if (addr + left < addr || gpa_chunk(p, addr, left, &host, &chunk))
            return SV3_BROKEN_ADDR;
        if (*nsegs < maxsegs) {            /* beyond: only counted, so the walk goes on */
            segs[*nsegs].ptr = host;       /* and still catches loops and bad addresses */
            segs[*nsegs].len = (uint32_t)chunk;
        }
        (*nsegs)++;
        addr += chunk;
        left -= chunk;
    }
    return 0;
}

/* Collect the buffers of the chain starting at head.  want_write: 1 for
 * guest RX chains (all writable), 0 for guest TX (all readable).
 * Returns 0 or an SV3_BROKEN_* reason. */
int sv3_walk_chain(struct sv3_port *p, struct sv3_vring *vr, uint16_t head, int want_write,
                   struct sv3_seg *segs, uint32_t maxsegs, uint32_t *nsegs, uint64_t *total)
{
    const struct vring_desc *table = (const struct vring_desc *)(uintptr_t)vr->desc;
    uint32_t tsize = vr->num, count = 0, idx = head;
    int in_indirect = 0, rc;
    struct vring_desc d;

    *nsegs = 0;
    *total = 0;
    for (;;) {
        if (idx >= tsize)
            return in_indirect ? SV3_BROKEN_INDIRECT : SV3_BROKEN_NEXT;
        if (++count > tsize)
            return SV3_BROKEN_LOOP;
        memcpy(&d, (const void *)&table[idx], sizeof d);   /* copy once: no TOCTOU */
        if (d.flags & VRING_DESC_F_INDIRECT) {
            uint8_t *host;
            uint64_t chunk;
            if (!p->indirect || in_indirect || (d.flags & VRING_DESC_F_NEXT) ||
                d.len == 0 || d.len % sizeof d || d.len / sizeof d > vr->num ||
                gpa_chunk(p, d.addr, d.len, &host, &chunk) || chunk != d.len)
                return SV3_BROKEN_INDIRECT;
            table = (const struct vring_desc *)host;
            tsize = d.len / sizeof d;
            idx = 0;
            count = 0;
            in_indirect = 1;
            continue;
        }
        if (!!(d.flags & VRING_DESC_F_WRITE) != want_write)
            return SV3_BROKEN_DIRECTION;
        if (d.len) {
            rc = add_segs(p, d.addr, d.len, segs, maxsegs, nsegs);
            if (rc)
                return rc;
            *total += d.len;
        }
        if (!(d.flags & VRING_DESC_F_NEXT))
            return *nsegs > maxsegs ? SV3_BROKEN_SEGS : 0;
        idx = d.next;
    }
}

/* Copy len bytes between a flat buffer and the segments, starting off
 * bytes into the segments: to_segs 1 writes the segments, 0 reads them. */
void sv3_segs_copy(const struct sv3_seg *segs, uint32_t nsegs, uint64_t off,
                   uint8_t *buf, uint64_t len, int to_segs)
{
    uint32_t i;
    for (i = 0; i < nsegs && len; i++) {
        if (off >= segs[i].len) {
            off -= segs[i].len;
            continue;
        }
        uint64_t n = segs[i].len - off;
        if (n > len)
            n = len;
        if (to_segs)
            memcpy(segs[i].ptr + off, buf, n);
        else
            memcpy(buf, segs[i].ptr + off, n);
        buf += n;
        len -= n;
        off = 0;
    }
}

/* Publish used->idx (done by the callers) and interrupt the guest if it
 * wants one (virtio 1.1 2.6.7.2: used_event with EVENT_IDX, else the
 * avail NO_INTERRUPT flag). */
void sv3_vring_signal(struct sv3_port *p, struct sv3_vring *vr)
{
    uint16_t old = vr->signalled_used, new = vr->used_idx;
    uint64_t one = 1;

    if (old == new || vr->call_fd < 0)
        return;
    sv3_fence();   /* used->idx store before the used_event / flags load */
    if (p->event_idx) {
        uint16_t ev = *used_event(vr);
        if ((uint16_t)(new - ev - 1) >= (uint16_t)(new - old)) {
            vr->signalled_used = new;
            return;
        }
    } else if (*avail_flags(vr) & VRING_AVAIL_F_NO_INTERRUPT) {
        vr->signalled_used = new;
        return;
    }
    vr->signalled_used = new;
    ssize_t rc = write(vr->call_fd, &one, sizeof one);
    (void)rc;      /* a full eventfd counter already interrupts */
}

/* Ask for guest kicks (want = 1) or suppress them (virtio 1.1 2.6.10). */
void sv3_vring_set_kicks(struct sv3_port *p, struct sv3_vring *vr, int want)
{
    if (!vr->started)
        return;
    vr->notify_armed = (uint8_t)want;
    if (p->event_idx) {
        if (want)
            *avail_event(vr) = vr->last_avail_idx;
    } else {
        *used_flags(vr) = want ? 0 : VRING_USED_F_NO_NOTIFY;
    }
}

/* Chains the guest made available: 0 and *count set, or a broken reason. */
int sv3_vring_pending(struct sv3_port *p, struct sv3_vring *vr, uint16_t *count)
{
    uint16_t n = (uint16_t)(sv3_load_acquire16(avail_idx(vr)) - vr->last_avail_idx);
    (void)p;
    if (n > vr->num)
        return SV3_BROKEN_AVAIL_IDX;
    *count = n;
    return 0;
}
