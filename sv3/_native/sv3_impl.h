/* sv3_impl.h - C-only helpers shared by the C core files; never seen by cdef. */
#ifndef SV3_IMPL_H
#define SV3_IMPL_H
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include "sv3.h"

#define SV3_RING_DATA_OFF 192
#define SV3_ALIGN16(x) (((x) + 15u) & ~(uint64_t)15u)
#define SV3_FWD_DROP (-2)
#define SV3_FWD_FLOOD (-1)

_Static_assert(sizeof(struct sv3_ring) == SV3_RING_DATA_OFF, "ring header is 3 cache lines");
_Static_assert(offsetof(struct sv3_ring, head) == 64, "consumer line");
_Static_assert(offsetof(struct sv3_ring, magic) == 128, "constant line");
_Static_assert(sizeof(struct sv3_frame) == 16, "frame record header");
_Static_assert(sizeof(struct sv3_fdb_entry) == 16, "fdb entry");

static inline uint64_t sv3_load_acquire64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void sv3_store_release64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint16_t sv3_load_acquire16(const volatile uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void sv3_store_release16(volatile uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* A full fence: orders a store before a later load (needed for the
 * sleeping/doorbell handshake and for virtio notification decisions). */
static inline void sv3_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline uint64_t sv3_mac48(const uint8_t *m)
{
    return (uint64_t)m[0] | (uint64_t)m[1] << 8 | (uint64_t)m[2] << 16 |
           (uint64_t)m[3] << 24 | (uint64_t)m[4] << 32 | (uint64_t)m[5] << 40;
}

static inline uint64_t sv3_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint16_t le16(const uint8_t *b) { return (uint16_t)(b[0] | b[1] << 8); }
static inline void put_le16(uint8_t *b, uint16_t v) { b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); }

/* The 10 bytes a virtio_net_hdr has before num_buffers (virtio 1.1 5.1.6,
 * little endian) <-> a ring record's metadata.  A guest's header and the
 * kernel's PACKET_VNET_HDR header have this layout; they are read into
 * struct sv3_frame and checked (sv3_offload_check) before any use. */
#define SV3_NET_HDR_LEN 10
static inline void sv3_net_hdr_get(struct sv3_frame *m, const uint8_t *h)
{
    m->flags = h[0];
    m->gso_type = h[1];
    m->hdr_len = le16(h + 2);
    m->gso_size = le16(h + 4);
    m->csum_start = le16(h + 6);
    m->csum_offset = le16(h + 8);
}

static inline void sv3_net_hdr_put(uint8_t *h, const struct sv3_frame *m, uint8_t flags)
{
    h[0] = flags;
    h[1] = m->gso_type;
    put_le16(h + 2, m->hdr_len);
    put_le16(h + 4, m->gso_size);
    put_le16(h + 6, m->csum_start);
    put_le16(h + 8, m->csum_offset);
}

/* A buffer of a frame, at a local address (guest memory, a kernel ring). */
struct sv3_seg { uint8_t *ptr; uint32_t len; };

/* A frame above the port's MTU (plus an Ethernet header and one VLAN
 * tag), other than a GSO frame: dropped as oversize, never truncated. */
static inline int sv3_above_mtu(const struct sv3_port *p, const struct sv3_frame *f)
{
    return p->mtu && f->len > p->mtu + 18 && !f->gso_type;   /* 0: no limit (C tests) */
}

/* What a frame's metadata asks of its receiver (SV3_ACCEPT_* bits); per
 * frame and destination, so inline and quick for a frame without any. */
static inline uint8_t sv3_offload_needs(const struct sv3_frame *m)
{
    uint8_t type = m->gso_type & ~SV3_NET_HDR_GSO_ECN, n;

    if (!(m->flags & SV3_NET_HDR_F_NEEDS_CSUM) && !m->gso_type)
        return 0;
    n = (m->flags & SV3_NET_HDR_F_NEEDS_CSUM) ? SV3_ACCEPT_CSUM : 0;
    if (type == SV3_NET_HDR_GSO_TCPV4)
        n |= SV3_ACCEPT_TSO4;
    else if (type == SV3_NET_HDR_GSO_TCPV6)
        n |= SV3_ACCEPT_TSO6;
    if (m->gso_type & SV3_NET_HDR_GSO_ECN)
        n |= SV3_ACCEPT_ECN;
    return n;
}

/* forward.c */
int sv3_forward(struct sv3_port *p, const struct sv3_seg *segs, uint32_t nsegs, uint32_t skip,
                uint32_t flen, const uint8_t *eth, const struct sv3_frame *meta, int may_wait);
void sv3_publish_all(struct sv3_port *p);
int sv3_discard_inbound(struct sv3_port *p, uint64_t *reason);
int sv3_inbound_arm(struct sv3_port *p);

/* afpacket.c */
int sv3_afp_run(struct sv3_port *p);
int sv3_afp_arm(struct sv3_port *p);

/* ixgbe.c */
int sv3_ixgbe_run(struct sv3_port *p);
int sv3_ixgbe_arm(struct sv3_port *p);

/* ring.c internals used by port.c */
int sv3_ring_fits(const struct sv3_ring_prod *p, uint32_t len);
uint64_t sv3_ring_room(struct sv3_ring_prod *p);
struct sv3_frame *sv3_ring_reserve(struct sv3_ring_prod *p, uint32_t len);
void sv3_ring_commit(struct sv3_ring_prod *p, uint32_t len);
const struct sv3_frame *sv3_ring_peek(struct sv3_ring_cons *c);
void sv3_ring_consume(struct sv3_ring_cons *c, const struct sv3_frame *f);
void sv3_ring_release(struct sv3_ring_cons *c);
void sv3_ring_doorbell(struct sv3_ring_prod *p);
int sv3_ring_empty(struct sv3_ring_cons *c);
#endif
