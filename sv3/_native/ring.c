/* ring.c - the SPSC byte ring between two workers (see sv3/shm/ring.py).
 *
 * Records are struct sv3_frame + frame bytes, 16-byte aligned, never split:
 * a record that would cross the end of the data area is preceded by a pad
 * record (len = SV3_FRAME_PAD) that fills the rest of the area.
 *
 * Ordering (C11): the producer writes records, then store-releases tail;
 * the consumer load-acquires tail, reads records, then store-releases head.
 * Each side caches the other's cursor and reloads it only when the cached
 * value says "full" / "empty", so a burst touches the shared lines once.
 * Doorbell: a consumer about to sleep sets waiting = 1, fences, re-checks
 * tail; a producer publishes tail, fences, and if waiting is set swaps it
 * to 0 and writes the consumer's eventfd.  Either the consumer sees the new
 * tail or the producer sees waiting: no wake-up is lost.
 */
#include <unistd.h>
#include "sv3_impl.h"

void sv3_ring_init(struct sv3_ring *r, uint64_t size)
{
    memset(r, 0, sizeof *r);
    r->size = size;
    r->version = 1;
    r->magic = SV3_RING_MAGIC;
}

void sv3_ring_prod_attach(struct sv3_ring_prod *p, struct sv3_ring *r, int doorbell_fd, uint16_t port_id)
{
    p->ring = r;
    p->data = (uint8_t *)r + SV3_RING_DATA_OFF;
    p->tail = sv3_load_acquire64(&r->tail);
    p->head_cache = sv3_load_acquire64(&r->head);
    p->mask = r->size - 1;
    p->doorbell_fd = doorbell_fd;
    p->port_id = port_id;
    p->dirty = 0;
    p->stalled = 0;
    p->full_since = 0;
}

void sv3_ring_cons_attach(struct sv3_ring_cons *c, struct sv3_ring *r)
{
    c->ring = r;
    c->data = (uint8_t *)r + SV3_RING_DATA_OFF;
    c->head = sv3_load_acquire64(&r->head);
    c->tail_cache = sv3_load_acquire64(&r->tail);
    c->mask = r->size - 1;
}

static uint64_t ring_free(struct sv3_ring_prod *p, uint64_t need)
{
    uint64_t size = p->mask + 1;
    if (size - (p->tail - p->head_cache) < need)
        p->head_cache = sv3_load_acquire64(&p->ring->head);
    return size - (p->tail - p->head_cache);
}

/* Free bytes, looking at the consumer's head now. */
uint64_t sv3_ring_room(struct sv3_ring_prod *p)
{
    p->head_cache = sv3_load_acquire64(&p->ring->head);
    return p->mask + 1 - (p->tail - p->head_cache);
}

/* Whether a frame of len bytes can ever fit (at most half the ring). */
int sv3_ring_fits(const struct sv3_ring_prod *p, uint32_t len)
{
    return SV3_ALIGN16(sizeof(struct sv3_frame) + len) <= (p->mask + 1) / 2;
}

/* Room for a frame of len bytes (one that fits); NULL while the ring is
 * full.  The caller decides whether to wait or to count a drop. */
struct sv3_frame *sv3_ring_reserve(struct sv3_ring_prod *p, uint32_t len)
{
    uint64_t need = SV3_ALIGN16(sizeof(struct sv3_frame) + len);
    uint64_t pos = p->tail & p->mask;
    uint64_t contig = p->mask + 1 - pos;
    uint64_t total = need <= contig ? need : contig + need;

    if (ring_free(p, total) < total)
        return NULL;
    if (need > contig) {
        struct sv3_frame *pad = (struct sv3_frame *)(p->data + pos);
        pad->len = SV3_FRAME_PAD;
        p->tail += contig;
        pos = 0;
    }
    return (struct sv3_frame *)(p->data + pos);
}

void sv3_ring_commit(struct sv3_ring_prod *p, uint32_t len)
{
    p->tail += SV3_ALIGN16(sizeof(struct sv3_frame) + len);
    p->ring->frames++;
    p->dirty = 1;
}

void sv3_ring_doorbell(struct sv3_ring_prod *p)
{
    uint64_t one = 1;
    if (__atomic_load_n(&p->ring->waiting, __ATOMIC_RELAXED) &&
        __atomic_exchange_n(&p->ring->waiting, 0, __ATOMIC_ACQ_REL) && p->doorbell_fd >= 0) {
        ssize_t rc = write(p->doorbell_fd, &one, sizeof one);
        (void)rc;   /* EAGAIN: the counter is already non-zero, the peer wakes anyway */
    }
}

/* Make staged records visible, then wake the consumer if it sleeps. */
void sv3_ring_publish(struct sv3_ring_prod *p)
{
    if (!p->dirty)
        return;
    p->dirty = 0;
    sv3_store_release64(&p->ring->tail, p->tail);
    sv3_fence();
    sv3_ring_doorbell(p);
}

/* Next record, or NULL when the ring is empty.  Pads are skipped here. */
const struct sv3_frame *sv3_ring_peek(struct sv3_ring_cons *c)
{
    for (;;) {
        if (c->head == c->tail_cache) {
            c->tail_cache = sv3_load_acquire64(&c->ring->tail);
            if (c->head == c->tail_cache)
                return NULL;
        }
        uint64_t pos = c->head & c->mask;
        const struct sv3_frame *f = (const struct sv3_frame *)(c->data + pos);
        if (f->len != SV3_FRAME_PAD) {
            if (f->len <= (c->mask + 1) / 2 && (uint64_t)f->len < c->tail_cache - c->head)
                return f;
            c->head = c->tail_cache;   /* corrupt record from the peer: drop the rest */
            return NULL;
        }
        c->head += c->mask + 1 - pos;
    }
}

void sv3_ring_consume(struct sv3_ring_cons *c, const struct sv3_frame *f)
{
    (void)f;
    const struct sv3_frame *cur = (const struct sv3_frame *)(c->data + (c->head & c->mask));
    c->head += SV3_ALIGN16(sizeof(struct sv3_frame) + cur->len);
}

void sv3_ring_release(struct sv3_ring_cons *c)
{
    sv3_store_release64(&c->ring->head, c->head);
}

int sv3_ring_empty(struct sv3_ring_cons *c)
{
    return sv3_ring_peek(c) == NULL;
}

/* Test and tool API: frames laid end to end in buf, lengths in lens. */
int sv3_ring_enqueue_burst(struct sv3_ring_prod *p, const uint8_t *buf, const uint32_t *lens, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++) {
        struct sv3_frame *f = sv3_ring_fits(p, lens[i]) ? sv3_ring_reserve(p, lens[i]) : NULL;
        if (!f) {
            p->ring->drops++;
            break;
        }
        memset(f, 0, sizeof *f);
        f->len = lens[i];
        memcpy(f + 1, buf, lens[i]);
        buf += lens[i];
        sv3_ring_commit(p, lens[i]);
    }
    sv3_ring_publish(p);
    return (int)i;
}

int sv3_ring_dequeue_burst(struct sv3_ring_cons *c, uint8_t *buf, uint32_t buflen, uint32_t *lens, uint32_t n)
{
    uint32_t i, used = 0;
    for (i = 0; i < n; i++) {
        const struct sv3_frame *f = sv3_ring_peek(c);
        if (!f || f->len > buflen - used)
            break;
        memcpy(buf + used, f + 1, f->len);
        lens[i] = f->len;
        used += f->len;
        sv3_ring_consume(c, f);
    }
    sv3_ring_release(c);
    return (int)i;
}
