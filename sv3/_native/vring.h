/* vring.h - split virtqueue layout (virtio 1.1 section 2.6) and the
 * guest-memory helpers of the C core.  Everything here treats guest memory
 * as hostile: descriptors are copied before use, every index and length is
 * checked, and a structural error marks the port broken (SV3_BROKEN_*). */
#ifndef SV3_VRING_H
#define SV3_VRING_H
#include "sv3_impl.h"

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_USED_F_NO_NOTIFY 1
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct vring_used_elem { uint32_t id; uint32_t len; };

/* Field accessors: the rings live in guest memory at vr->avail / vr->used. */
static inline volatile uint16_t *avail_flags(const struct sv3_vring *vr) { return (volatile uint16_t *)vr->avail; }
static inline volatile uint16_t *avail_idx(const struct sv3_vring *vr) { return (volatile uint16_t *)(vr->avail + 2); }
static inline volatile uint16_t *avail_ring(const struct sv3_vring *vr, uint32_t i) { return (volatile uint16_t *)(vr->avail + 4 + 2 * i); }
static inline volatile uint16_t *used_event(const struct sv3_vring *vr) { return avail_ring(vr, vr->num); }
static inline volatile uint16_t *used_flags(const struct sv3_vring *vr) { return (volatile uint16_t *)vr->used; }
static inline volatile uint16_t *used_idx(const struct sv3_vring *vr) { return (volatile uint16_t *)(vr->used + 2); }
static inline volatile struct vring_used_elem *used_elem(const struct sv3_vring *vr, uint32_t i) { return (volatile struct vring_used_elem *)(vr->used + 4 + 8 * i); }
static inline volatile uint16_t *avail_event(const struct sv3_vring *vr) { return (volatile uint16_t *)(vr->used + 4 + 8 * vr->num); }

int sv3_walk_chain(struct sv3_port *p, struct sv3_vring *vr, uint16_t head, int want_write,
                   struct sv3_seg *segs, uint32_t maxsegs, uint32_t *nsegs, uint64_t *total);
void sv3_segs_copy(const struct sv3_seg *segs, uint32_t nsegs, uint64_t off,
                   uint8_t *buf, uint64_t len, int to_segs);
void sv3_vring_signal(struct sv3_port *p, struct sv3_vring *vr);
void sv3_vring_set_kicks(struct sv3_port *p, struct sv3_vring *vr, int want);
int sv3_vring_pending(struct sv3_port *p, struct sv3_vring *vr, uint16_t *count);
int sv3_tx_vring(struct sv3_port *p, struct sv3_vring *vr);
int sv3_rx_vring(struct sv3_port *p, struct sv3_vring *vr, uint32_t sel, uint32_t nsel);
#endif
