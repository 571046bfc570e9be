/* forward.c - what every port kind does with a frame it received: the
 * forwarding decision (fdb.c), the copy into the destination rings, and
 * the backpressure rule; and what it does with inbound frames that nobody
 * can take.  The kinds (port.c vhost, afpacket.c) call only these.
 *
 * Copy budget: source buffer -> ring record, once per destination.
 * Source frames are read-only here.
 */
#include "vring.h"

/* Whether to wait for room in a full ring (backpressure: the frame stays
 * in the guest's TX vring, as vhost-net does when a tap is full) or to drop.
 * A ring full for SV3_STALL_NS has a stuck consumer (a guest that stopped
 * taking frames): drop, counted on it, without waiting, until it has
 * drained to half full (a slow receiver must not hold its senders up). */
static int wait_for_room(struct sv3_ring_prod *o)
{
    uint64_t now;
    if (o->stalled)
        return 0;
    now = sv3_now_ns();
    if (!o->full_since)
        o->full_since = now;
    if (now - o->full_since < SV3_STALL_NS)
        return 1;
    o->stalled = 1;
    return 0;
}

/* Copy one frame into a ring, with its metadata.  Returns 1 when the
 * caller should keep the frame and retry later (unicast into a full ring),
 * else 0. */
static int enqueue(struct sv3_ring_prod *o, const struct sv3_seg *segs, uint32_t nsegs,
                   uint32_t skip, uint32_t flen, const struct sv3_frame *meta, int may_wait)
{
    struct sv3_frame *f = sv3_ring_fits(o, flen) ? sv3_ring_reserve(o, flen) : NULL;
    if (!f) {
        if (may_wait && sv3_ring_fits(o, flen) && wait_for_room(o))
            return 1;
        o->ring->drops++;
        return 0;
    }
    if (o->stalled && sv3_ring_room(o) > (o->mask + 1) / 2)
        o->stalled = 0;             /* it drains again: worth waiting for next time */
    o->full_since = 0;
    *f = *meta;
    f->len = flen;
    sv3_segs_copy(segs, nsegs, skip, (uint8_t *)(f + 1), flen, 0);
    sv3_ring_commit(o, flen);
    return 0;
}

/* The offload slow path of one source frame, for receivers that do not
 * take its metadata (sv3_ring.accepts): a copy with the checksum completed,
 * or its TCP segments.  Made at most once per frame, in p->scratch, and
 * copied to every such receiver: a flood does the work once per kind of
 * receiver, never once per port. */
struct slow {
    const struct sv3_seg *segs;
    uint32_t nsegs, skip, flen;
    const struct sv3_frame *meta;
    int made;               /* 0 not yet, >0 segments (1 for a checksummed copy), <0 failed */
    uint32_t lens[SV3_GSO_MAX_SEGS];
};

#define SLOW_LINEAR 69632u   /* scratch: [0, SLOW_LINEAR) the frame, then segments */

static int slow_make(struct sv3_port *p, struct slow *s)
{
    uint8_t *lin = p->scratch;
    int n;

    sv3_segs_copy(s->segs, s->nsegs, s->skip, lin, s->flen, 0);
    if (s->meta->gso_type) {
        n = sv3_gso_segment(lin, s->flen, s->meta, lin + SLOW_LINEAR,
                            SV3_SCRATCH_BYTES - SLOW_LINEAR, s->lens, SV3_GSO_MAX_SEGS);
        if (n > 0)
            p->ctr->sw_segmented++;
    } else {
        n = sv3_csum_complete(lin, s->flen, s->meta->csum_start, s->meta->csum_offset) ? -1 : 1;
        s->lens[0] = s->flen;
        if (n > 0)
            p->ctr->sw_checksummed++;
    }
    if (n < 0)
        p->ctr->drop_bad_header++;   /* headers the metadata does not fit (counted once) */
    return n;
}

static int enqueue_slow(struct sv3_port *p, struct sv3_ring_prod *o, struct slow *s, int may_wait)
{
    struct sv3_frame valid = { .flags = SV3_NET_HDR_F_DATA_VALID };
    uint8_t *out = p->scratch + (s->meta->gso_type ? SLOW_LINEAR : 0);
    uint64_t need = 0;
    uint32_t k, big = 0;

    if (!s->made)
        s->made = p->scratch ? slow_make(p, s) : -1;
    if (s->made <= 0)
        return 0;
    for (k = 0; k < (uint32_t)s->made; k++) {
        need += SV3_ALIGN16(sizeof(struct sv3_frame) + s->lens[k]);
        big = s->lens[k] > big ? s->lens[k] : big;
    }
    if (sv3_ring_room(o) < need + SV3_ALIGN16(sizeof(struct sv3_frame) + big)) {  /* all or none */
        if (may_wait && wait_for_room(o))
            return 1;
        o->ring->drops++;
        return 0;
    }
    for (k = 0; k < (uint32_t)s->made; k++) {
        struct sv3_seg one = { out, s->lens[k] };
        enqueue(o, &one, 1, 0, s->lens[k], &valid, 0);
        out += s->lens[k];
    }
    return 0;
}

static int to_ring(struct sv3_port *p, struct sv3_ring_prod *o, struct slow *s, int may_wait)
{
    uint8_t need = sv3_offload_needs(s->meta);   /* accepts shares the consumer's line: */
    if (need && (need & ~__atomic_load_n(&o->ring->accepts, __ATOMIC_RELAXED)))  /* read it rarely */
        return enqueue_slow(p, o, s, may_wait);
    return enqueue(o, s->segs, s->nsegs, s->skip, s->flen, s->meta, may_wait);
}

/* One frame of flen bytes, starting skip bytes into segs, with its checked
 * metadata (sv3_offload_check), to its destination(s); eth is a copy of its
 * first 14 bytes.  Counts it as received.  Returns 1 when the caller must
 * keep the frame and offer it again later (unicast into a full ring,
 * may_wait set), else 0. */
int sv3_forward(struct sv3_port *p, const struct sv3_seg *segs, uint32_t nsegs, uint32_t skip,
                uint32_t flen, const uint8_t *eth, const struct sv3_frame *meta, int may_wait)
{
    struct slow s;          /* lens[] is written only if the slow path runs */
    uint32_t i;
    int d = sv3_forward_decision(p, eth, flen, NULL);

    s.segs = segs, s.nsegs = nsegs, s.skip = skip, s.flen = flen, s.meta = meta, s.made = 0;
    if (d >= 0) {
        if (to_ring(p, &p->out[d], &s, may_wait))
            return 1;
    } else if (d == SV3_FWD_FLOOD) {
        p->ctr->flood_frames++;
        for (i = 0; i < p->npeers; i++)
            to_ring(p, &p->out[i], &s, 0);
    }
    p->ctr->rx_frames++;
    p->ctr->rx_bytes += flen;
    return 0;
}

void sv3_publish_all(struct sv3_port *p)
{
    uint32_t k;
    for (k = 0; k < p->npeers; k++)
        sv3_ring_publish(&p->out[k]);
}

/* Empty every inbound ring, counting each frame in *reason (the device
 * cannot take frames: stopped, broken, link down). */
int sv3_discard_inbound(struct sv3_port *p, uint64_t *reason)
{
    const struct sv3_frame *f;
    uint32_t i;
    int done = 0;

    for (i = 0; i < p->nin; i++) {
        while ((f = sv3_ring_peek(&p->inb[i])) != NULL) {
            (*reason)++;
            sv3_ring_consume(&p->inb[i], f);
            done++;
        }
        sv3_ring_release(&p->inb[i]);
    }
    return done;
}

/* Before sleeping: ask every inbound ring's producer for a doorbell, then
 * look again (a frame that raced the request is seen here; the caller then
 * looks at its device, after this fence).  1 = frames are waiting. */
int sv3_inbound_arm(struct sv3_port *p)
{
    uint32_t i;

    for (i = 0; i < p->nin; i++)
        __atomic_store_n(&p->inb[i].ring->waiting, 1, __ATOMIC_RELAXED);
    sv3_fence();
    for (i = 0; i < p->nin; i++)
        if (!sv3_ring_empty(&p->inb[i]))
            return 1;
    return 0;
}
