/* sv3.h - the contract between the Python control path and the C core.
 *
 * This file is read twice: by the C compiler (the .c files beside it) and by
 * cffi's cdef (sv3/_native/build.py strips the preprocessor lines that
 * cdef does not understand).  Every struct that both sides touch is defined
 * here and nowhere else.  Keep it to plain C that pycparser accepts.
 *
 * Vocabulary: a *vring* is a guest virtqueue (split layout, virtio 1.1
 * section 2.6); a *ring* is sv3's SPSC byte ring in POSIX shared memory
 * (sv3/shm/ring.py documents its layout); a *frame* is one Ethernet frame
 * stored in a ring; a *breath* is one pass of a worker's loop.
 */

#define SV3_MAX_REGIONS 8        /* vhost-user SET_MEM_TABLE limit */
#define SV3_MAX_VRINGS 16        /* 8 queue pairs: vring 2k guest RX, 2k+1 guest TX */
#define SV3_MAX_PEERS 64         /* other ports one worker can reach */
#define SV3_MAX_BATCH 256        /* chains or frames per source per breath */
#define SV3_LEARN_MAX 16         /* MAC reports collected per run call */
#define SV3_MAX_WATCH 24         /* control fds sv3_port_poll() looks at */
#define SV3_MAX_FRAME 65550      /* 64 KiB GSO frame plus an Ethernet header */
#define SV3_MAX_SEGS 64          /* buffers per guest TX chain / per RX frame */
#define SV3_RING_MAGIC 0x53563352
#define SV3_FRAME_PAD 0xffffffff /* record len marking "skip to ring start" */
#define SV3_STALL_NS 10000000    /* a ring full this long has a stuck consumer */

/* struct sv3_ring - the shared header of one SPSC ring (lives in shm).
 * Line 0 is written only by the producer, line 1 only by the consumer,
 * line 2 only by the master before either side attaches.  Data follows
 * at byte 192; records are 16-byte aligned (struct sv3_frame + bytes). */
struct sv3_ring {
    uint64_t tail;          /* producer: bytes published (release store) */
    uint64_t frames;        /* producer: frames enqueued */
    uint64_t drops;         /* producer: frames dropped, ring full */
    uint64_t _pad0[5];
    uint64_t head;          /* consumer: bytes consumed (release store) */
    uint32_t waiting;       /* consumer: 1 = about to sleep, ring doorbell */
    uint32_t accepts;       /* consumer: SV3_ACCEPT_* offloads it takes as they are */
    uint64_t _pad1[6];
    uint32_t magic;         /* master: SV3_RING_MAGIC */
    uint32_t version;       /* master: layout version, 1 */
    uint64_t size;          /* master: data bytes, a power of two */
    uint64_t _pad2[6];
};

/* Offloads, as bits of sv3_ring.accepts and sv3_port.host_offloads /
 * guest_offloads: what a frame's metadata asks of its receiver. */
#define SV3_ACCEPT_CSUM 1        /* NEEDS_CSUM: a partial checksum (GUEST_CSUM / CSUM) */
#define SV3_ACCEPT_TSO4 2        /* GSO TCPV4 (GUEST_TSO4 / HOST_TSO4) */
#define SV3_ACCEPT_TSO6 4        /* GSO TCPV6 (GUEST_TSO6 / HOST_TSO6) */
#define SV3_ACCEPT_ECN 8         /* GSO with ECN (GUEST_ECN / HOST_ECN) */
#define SV3_SCRATCH_BYTES 262144 /* sv3_port.scratch: the offload slow path */

/* virtio-net header values (virtio 1.1 5.1.6) */
#define SV3_NET_HDR_F_NEEDS_CSUM 1
#define SV3_NET_HDR_F_DATA_VALID 2
#define SV3_NET_HDR_GSO_TCPV4 1
#define SV3_NET_HDR_GSO_TCPV6 4
#define SV3_NET_HDR_GSO_ECN 128

/* struct sv3_frame - the record header in front of each frame in a ring.
 * The virtio-net header fields travel with the frame (virtio 1.1 5.1.6):
 * flags NEEDS_CSUM (csum_start/offset valid) or DATA_VALID (sv3 or the
 * kernel computed or checked the checksum), gso_* for a GSO frame. */
struct sv3_frame {
    uint32_t len;           /* frame bytes, or SV3_FRAME_PAD */
    uint8_t flags;          /* virtio_net_hdr.flags */
    uint8_t gso_type;       /* virtio_net_hdr.gso_type */
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t hdr_len;
    uint16_t _pad;
};

/* A worker's private cursor on one ring it produces into. */
struct sv3_ring_prod {
    struct sv3_ring *ring;
    uint8_t *data;
    uint64_t tail;          /* staged, published at the end of a breath */
    uint64_t head_cache;    /* last head seen */
    uint64_t mask;
    int doorbell_fd;        /* consumer's eventfd */
    uint16_t port_id;       /* consumer's port id */
    uint16_t dirty;         /* staged records not yet published */
    uint32_t stalled;       /* full for SV3_STALL_NS: drop instead of waiting */
    uint64_t full_since;    /* CLOCK_MONOTONIC ns when it was first seen full, or 0 */
};

/* A worker's private cursor on one ring it consumes from. */
struct sv3_ring_cons {
    struct sv3_ring *ring;
    uint8_t *data;
    uint64_t head;
    uint64_t tail_cache;
    uint64_t mask;
};

/* One region of guest memory (vhost-user SET_MEM_TABLE), mapped locally. */
struct sv3_region {
    uint64_t gpa;           /* guest_phys_addr */
    uint64_t size;          /* memory_size */
    uint64_t qva;           /* userspace_addr (front-end's address) */
    uint64_t host;          /* local address of gpa */
};

/* Per-vring state, written by the worker only (between breaths by the
 * vhost-user handlers, during breaths by the C core). */
struct sv3_vring {
    uint64_t desc;          /* local addresses, 0 until translated */
    uint64_t avail;
    uint64_t used;
    uint32_t num;           /* queue size, power of two */
    uint16_t last_avail_idx;
    uint16_t used_idx;      /* private copy, never read back while running */
    uint16_t signalled_used;
    uint8_t started;        /* SET_VRING_KICK seen and ring translated */
    uint8_t enabled;        /* SET_VRING_ENABLE 1 */
    uint8_t notify_armed;   /* guest kicks currently wanted */
    uint8_t rx_starved;     /* RX: frames wait for guest buffers on this vring */
    uint16_t rx_starved_avail; /* RX: avail->idx when that was seen */
    int kick_fd;
    int call_fd;
};

/* Per-port counters, in the port's shm block.  Written only by the port's
 * worker, read by the master for sv3.ctl.  rx = received from the guest,
 * tx = sent to the guest (the switch port's view). */
struct sv3_counters {
    uint64_t rx_frames;
    uint64_t rx_bytes;
    uint64_t tx_frames;
    uint64_t tx_bytes;
    uint64_t flood_frames;
    uint64_t drop_runt;         /* guest frame shorter than header+14 */
    uint64_t drop_hairpin;      /* destination is the ingress port */
    uint64_t drop_bad_header;   /* virtio-net header asks for what was not acked */
    uint64_t drop_no_buffer;    /* guest RX buffers too small for the frame */
    uint64_t drop_oversize;
    uint64_t drop_broken;       /* frames dropped because the port is broken */
    uint64_t breaths;
    uint64_t wakeups;           /* sleeps ended by a kick, doorbell or timeout */
    uint64_t yields;            /* idle breaths that handed the core over */
    uint64_t learn_reports;
    uint64_t drop_link_down;    /* uplink: frames for a link that is down */
    uint64_t sw_checksummed;    /* frames whose checksum sv3 completed (offload.c) */
    uint64_t sw_segmented;      /* GSO frames sv3 segmented in software */
    uint64_t hw_rx_frames;      /* an uplink NIC's own statistics registers, */
    uint64_t hw_rx_bytes;       /* accumulated by its worker (82599: GPRC, */
    uint64_t hw_tx_frames;      /* GORC, GPTC, GOTC, MPC, CRCERRS) */
    uint64_t hw_tx_bytes;
    uint64_t hw_rx_missed;
    uint64_t hw_crc_errors;
    uint64_t offload_frames;    /* frames received with offload metadata (csum or GSO) */
};

/* Port kinds: which device a worker's sv3_port_run() drives.  Rings,
 * forwarding, learning and counters are the same for every kind. */
#define SV3_KIND_VHOST 0         /* a guest's virtio-net over vhost-user */
#define SV3_KIND_AF_PACKET 1     /* a Linux interface, packet(7) TPACKET_V2 rings */
#define SV3_KIND_IXGBE 2         /* an Intel 82599 through VFIO */

/* An AF_PACKET uplink (afpacket.c; set up by sv3/uplink/afpacket.py).
 * Both rings use slots of slot_size bytes: struct tpacket2_hdr, then
 * (PACKET_VNET_HDR) a 10-byte virtio_net_hdr, then the frame. */
struct sv3_afp {
    int fd;
    uint32_t slot_size;
    uint8_t *rx;            /* PACKET_RX_RING, rx_slots slots */
    uint32_t rx_slots;
    uint32_t rx_pos;        /* next slot the kernel fills */
    uint8_t *tx;            /* PACKET_TX_RING, tx_slots slots */
    uint32_t tx_slots;
    uint32_t tx_pos;        /* next slot to fill */
    uint32_t tx_queued;     /* slots handed over but not yet sent (send() failed) */
    uint8_t link_up;        /* written by Python from rtnetlink */
    uint8_t _pad[3];
    int send_errno;         /* last send() error, for the log */
    uint8_t *scratch;       /* SV3_AFP_SCRATCH bytes: a re-tagged frame */
};
#define SV3_AFP_SCRATCH 69632

/* The 82599's queue 0 as the data path sees it (ixgbe.c; set up by
 * sv3/uplink/ixgbe.py).  Advanced descriptors, 16 bytes (datasheet 7.1.6,
 * 7.2.3).  Descriptor i always carries buffer i of its ring's buffers. */
struct sv3_ixgbe {
    uint8_t *bar;           /* BAR0: the data path writes RDT and TDT only */
    uint8_t *rx_ring;       /* rx_num descriptors */
    uint8_t *rx_bufs;       /* rx_num buffers of buf_size */
    uint64_t rx_bufs_iova;
    uint32_t rx_num;
    uint32_t rx_next;       /* next descriptor to look at (DD) */
    uint8_t *tx_ring;
    uint8_t *tx_bufs;
    uint64_t tx_bufs_iova;
    uint32_t *tx_head_wb;   /* TDWBAL head write-back word */
    uint32_t tx_num;
    uint32_t tx_tail;       /* next descriptor to fill (TDT after a batch) */
    uint32_t buf_size;
    uint8_t link_up;        /* written by Python (LINKS, datasheet 8.2.3.22.20) */
    uint8_t _pad[3];
};

/* Broken reasons (sv3_port.broken), named for the log line. */
#define SV3_BROKEN_NONE 0
#define SV3_BROKEN_AVAIL_IDX 1     /* avail idx moved by more than num */
#define SV3_BROKEN_HEAD 2          /* head index >= num */
#define SV3_BROKEN_NEXT 3          /* next index out of range */
#define SV3_BROKEN_LOOP 4          /* chain longer than the ring */
#define SV3_BROKEN_ADDR 5          /* buffer outside guest memory */
#define SV3_BROKEN_INDIRECT 6      /* malformed indirect table */
#define SV3_BROKEN_DIRECTION 7     /* writable descriptor in TX / readable in RX */
#define SV3_BROKEN_SEGS 8          /* more buffers than SV3_MAX_SEGS (TX: chain dropped) */
#define SV3_BROKEN_EMPTY_RX 9      /* guest RX chain with no room at all */

struct sv3_fdb_entry {
    uint64_t mac;           /* 48-bit MAC in the low bytes, 0 = empty slot */
    uint16_t port_id;
    uint8_t hit;            /* worker: source seen since last report */
    uint8_t _pad[5];
};

/* The worker's whole data-path state.  Python owns the memory (ffi.new)
 * and changes fields only between calls into the C core. */
struct sv3_port {
    uint16_t port_id;
    uint16_t hdr_len;       /* 12 with VERSION_1 or MRG_RXBUF, else 10 */
    uint8_t mrg_rxbuf;
    uint8_t event_idx;
    uint8_t indirect;
    uint8_t broken;         /* SV3_BROKEN_*, first reason; vrings untouched */
    uint8_t broken_vring;
    uint8_t rx_starved;     /* some RX vring waits for guest buffers */
    uint16_t _pad_rx;
    uint16_t batch;
    uint32_t nregions;
    struct sv3_region regions[SV3_MAX_REGIONS];
    struct sv3_vring vr[SV3_MAX_VRINGS];
    uint32_t npeers;
    struct sv3_ring_prod out[SV3_MAX_PEERS];
    uint32_t nin;
    struct sv3_ring_cons inb[SV3_MAX_PEERS];  /* inbound rings */
    struct sv3_fdb_entry *fdb;
    uint32_t fdb_mask;
    uint32_t nlearn;
    uint64_t learn[SV3_LEARN_MAX];
    uint64_t last_src;
    struct sv3_counters *ctr;
    uint32_t nwatch;
    int watch_fds[SV3_MAX_WATCH];   /* control fds (vhost-user, master, doorbell, kicks) */
    uint8_t kind;                   /* SV3_KIND_* */
    uint8_t host_offloads;          /* SV3_ACCEPT_*: metadata the device may send us */
    uint8_t guest_offloads;         /* SV3_ACCEPT_*: metadata the device takes (vhost) */
    uint8_t nvrings;                /* vhost: vrings below this may be started (C only) */
    uint8_t _pad_kind[4];
    uint8_t *scratch;               /* SV3_SCRATCH_BYTES, owned by Python */
    uint32_t mtu;                   /* largest IP packet; bigger non-GSO frames are dropped */
    uint32_t _pad_mtu;
    struct sv3_afp *afp;            /* SV3_KIND_AF_PACKET */
    struct sv3_ixgbe *nic;          /* SV3_KIND_IXGBE */
};

/* ring.c */
void sv3_ring_init(struct sv3_ring *r, uint64_t size);
void sv3_ring_prod_attach(struct sv3_ring_prod *p, struct sv3_ring *r, int doorbell_fd, uint16_t port_id);
void sv3_ring_cons_attach(struct sv3_ring_cons *c, struct sv3_ring *r);
int sv3_ring_enqueue_burst(struct sv3_ring_prod *p, const uint8_t *buf, const uint32_t *lens, uint32_t n);
int sv3_ring_dequeue_burst(struct sv3_ring_cons *c, uint8_t *buf, uint32_t buflen, uint32_t *lens, uint32_t n);
void sv3_ring_publish(struct sv3_ring_prod *p);

/* fdb.c */
uint32_t sv3_fdb_load(struct sv3_fdb_entry *tab, uint32_t mask, const uint8_t *packed, uint32_t n);
int sv3_fdb_lookup(const struct sv3_fdb_entry *tab, uint32_t mask, const uint8_t *mac);
int sv3_forward_decision(struct sv3_port *p, const uint8_t *frame, uint32_t len, uint16_t *dst_out);
void sv3_fdb_clear_hits(struct sv3_port *p);

/* port.c */
int sv3_port_run(struct sv3_port *p, uint32_t max_breaths);
#define SV3_POLL_IDLE 0
#define SV3_POLL_CONTROL 1
#define SV3_POLL_REPORT 2
#define SV3_YIELDS_MIN 16        /* turns handed over before a worker may sleep */
#define SV3_CHECKS_PER_VISIT 256 /* busy: back to Python at least every 256 control looks */
int sv3_port_poll(struct sv3_port *p, uint64_t budget_ns, uint64_t spin_ns, uint64_t yield_ns);
int sv3_port_arm(struct sv3_port *p);
void sv3_port_disarm(struct sv3_port *p);
int sv3_vring_start(struct sv3_port *p, uint32_t i);

/* offload.c: the software slow path for virtio-net offload metadata
 * (virtio 1.1 5.1.6.2): checksum completion and TCP segmentation, for a
 * receiver that did not negotiate what a frame asks for. */
#define SV3_GSO_MAX_SEGS 128      /* segments one GSO frame may become */
#define SV3_OFFLOAD_BAD (-1)      /* malformed metadata or headers: drop, count */
#define SV3_OFFLOAD_TOO_BIG (-2)  /* out buffer or SV3_GSO_MAX_SEGS too small */
int sv3_csum_complete(uint8_t *frame, uint32_t len, uint32_t csum_start, uint32_t csum_offset);
int sv3_offload_check(const struct sv3_port *p, struct sv3_frame *meta, uint32_t flen);
int sv3_gso_segment(const uint8_t *frame, uint32_t len, const struct sv3_frame *meta,
                    uint8_t *out, uint32_t outlen, uint32_t *lens, uint32_t max_segs);

/* sys.c: the few OS calls Python's stdlib lacks */
void *sv3_map_fd(int fd, uint64_t len);
int sv3_unmap(void *addr, uint64_t len);
int sv3_set_pdeathsig(int sig);
uint32_t sv3_mmio_read32(void *bar, uint32_t off);
void sv3_mmio_write32(void *bar, uint32_t off, uint32_t v);
