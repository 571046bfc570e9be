/* ixgbe.c - one breath of an Intel 82599 uplink's queue 0: RX descriptors
 * -> rings to other ports, rings from other ports -> TX descriptors.
 * sv3/uplink/ixgbe.py resets and initialises the device and fills struct
 * sv3_ixgbe; this file touches only descriptors, buffers, RDT and TDT.
 *
 * Descriptor formats: advanced receive (datasheet 7.1.6: read format
 * {packet buffer, header buffer}; write-back {info, status/error/length})
 * and advanced transmit data (7.2.3.2.4).  Ownership: hardware owns RX
 * descriptors from RDH up to RDT (exclusive); we post everything but one.
 * TX completion comes from head write-back (TDWBAL, 7.2.3.5.2), never
 * from descriptor DD bits.  RDT is written once per batch, TDT once per
 * batch (a doorbell is an uncached write, ~1 us on PCIe).
 *
 * Copy budget: RX buffer -> ring record (1 per destination); ring record
 * -> TX buffer (1).  Buffer i belongs to descriptor i, so nothing here
 * allocates.
 */
#include "vring.h"

#define RDT_REG 0x01018                 /* 8.2.3.8.5, queue 0 */
#define TDT_REG 0x06018                 /* 8.2.3.9.11, queue 0 */
#define RXD_STAT_DD (1ull << 0)
#define RXD_STAT_EOP (1ull << 1)
#define RXD_ERR_RXE (1ull << 29)        /* MAC error (CRC, length, ...) */
#define TXD_DTYP_DATA (3ull << 20)
#define TXD_DCMD_EOP (1ull << 24)
#define TXD_DCMD_IFCS (1ull << 25)
#define TXD_DCMD_RS (1ull << 27)
#define TXD_DCMD_DEXT (1ull << 29)
#define TXD_PAYLEN_SHIFT 46

struct adv_desc { volatile uint64_t q0, q1; };

static void write_reg(struct sv3_ixgbe *n, uint32_t off, uint32_t v)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);      /* descriptors before the doorbell */
    *(volatile uint32_t *)(n->bar + off) = v;
}

static struct adv_desc *rx_desc(struct sv3_ixgbe *n, uint32_t i)
{
    return (struct adv_desc *)(n->rx_ring + 16u * i);
}

/* Give descriptor i back to the device with its own buffer. */
static void rx_post(struct sv3_ixgbe *n, uint32_t i)
{
    struct adv_desc *d = rx_desc(n, i);
    d->q0 = n->rx_bufs_iova + (uint64_t)n->buf_size * i;
    d->q1 = 0;                                    /* header buffer 0; clears DD */
}

/* The descriptors of one frame, from n->rx_next: returns how many (0: the
 * frame is not complete yet).  A chain longer than SV3_MAX_SEGS or a bad
 * length is returned as a negative count (dropped). */
static int rx_gather(struct sv3_ixgbe *n, struct sv3_seg *segs, uint32_t *total)
{
    uint32_t k, i = n->rx_next, bad = 0;

    *total = 0;
    for (k = 0; k < n->rx_num - 1; k++) {
        uint64_t q1 = __atomic_load_n(&rx_desc(n, i)->q1, __ATOMIC_ACQUIRE);   /* DD first */
        uint32_t len = (uint32_t)(q1 >> 32) & 0xffff;
        if (!(q1 & RXD_STAT_DD))
            return 0;
        if (len > n->buf_size || (q1 & RXD_ERR_RXE) || k >= SV3_MAX_SEGS)
            bad = 1;
        else {
            segs[k].ptr = n->rx_bufs + (uint64_t)n->buf_size * i;
            segs[k].len = len;
            *total += len;
        }
        if (q1 & RXD_STAT_EOP)
            return bad ? -(int)(k + 1) : (int)(k + 1);
        i = i + 1 == n->rx_num ? 0 : i + 1;
    }
    return -(int)k;                                   /* no EOP in a whole ring: drop it */
}

static int ixgbe_rx(struct sv3_port *p, struct sv3_ixgbe *n)
{
    static const struct sv3_frame plain;          /* no offload metadata from this NIC */
    struct sv3_seg segs[SV3_MAX_SEGS];
    uint8_t eth[14];
    uint32_t total, k;
    int done = 0, nd;

    while (done < p->batch && (nd = rx_gather(n, segs, &total)) != 0) {
        if (nd < 0 || total < 14) {
            if (nd < 0)
                p->ctr->drop_bad_header++;
            else
                p->ctr->drop_runt++;
        } else {
            sv3_segs_copy(segs, (uint32_t)nd, 0, eth, 14, 0);
            if (sv3_forward(p, segs, (uint32_t)nd, 0, total, eth, &plain, 1))
                break;                                /* its ring is full: stays in the NIC ring */
        }
        nd = nd < 0 ? -nd : nd;
        for (k = 0; k < (uint32_t)nd; k++) {
            rx_post(n, n->rx_next);
            n->rx_next = n->rx_next + 1 == n->rx_num ? 0 : n->rx_next + 1;
        }
        done++;
    }
    if (done) {
        sv3_publish_all(p);
        write_reg(n, RDT_REG, n->rx_next ? n->rx_next - 1 : n->rx_num - 1);
    }
    return done;
}

/* TX descriptors the device has not finished yet (head write-back). */
static uint32_t tx_in_flight(struct sv3_ixgbe *n)
{
    uint32_t head = __atomic_load_n(n->tx_head_wb, __ATOMIC_ACQUIRE);
    if (head >= n->tx_num)
        head = n->tx_tail;                 /* nonsense from the device: trust nothing */
    return (n->tx_tail + n->tx_num - head) % n->tx_num;
}

static void tx_fill(struct sv3_ixgbe *n, const struct sv3_frame *f)
{
    struct adv_desc *d = (struct adv_desc *)(n->tx_ring + 16u * n->tx_tail);
    memcpy(n->tx_bufs + (uint64_t)n->buf_size * n->tx_tail, f + 1, f->len);
    d->q0 = n->tx_bufs_iova + (uint64_t)n->buf_size * n->tx_tail;
    d->q1 = (uint64_t)f->len | TXD_DTYP_DATA | TXD_DCMD_EOP | TXD_DCMD_IFCS | TXD_DCMD_RS |
            TXD_DCMD_DEXT | (uint64_t)f->len << TXD_PAYLEN_SHIFT;
    n->tx_tail = n->tx_tail + 1 == n->tx_num ? 0 : n->tx_tail + 1;
}

static int ixgbe_tx(struct sv3_port *p, struct sv3_ixgbe *n)
{
    const struct sv3_frame *f;
    uint32_t i, room = n->tx_num - 1 - tx_in_flight(n);
    int done = 0;

    if (!n->link_up)
        return sv3_discard_inbound(p, &p->ctr->drop_link_down);
    for (i = 0; i < p->nin; i++) {
        while (done < p->batch && room && (f = sv3_ring_peek(&p->inb[i])) != NULL) {
            if (f->len > n->buf_size || f->len < 14 || sv3_above_mtu(p, f))
                p->ctr->drop_oversize++;      /* above the NIC's MTU (jumbo frames are off) */
            else if ((f->flags & SV3_NET_HDR_F_NEEDS_CSUM) || f->gso_type)
                p->ctr->drop_bad_header++;    /* no TX offloads programmed: senders complete them */
            else {
                tx_fill(n, f);
                room--;
                p->ctr->tx_frames++;
                p->ctr->tx_bytes += f->len;
            }
            sv3_ring_consume(&p->inb[i], f);
            done++;
        }
        sv3_ring_release(&p->inb[i]);
    }
    if (done)
        write_reg(n, TDT_REG, n->tx_tail);
    return done;
}

int sv3_ixgbe_run(struct sv3_port *p)
{
    struct sv3_ixgbe *n = p->nic;
    if (!n)
        return 0;
    return ixgbe_rx(p, n) + ixgbe_tx(p, n);
}

/* Before sleeping (Python has re-armed the RX/TX vector): 1 = work pending. */
int sv3_ixgbe_arm(struct sv3_port *p)
{
    struct sv3_ixgbe *n = p->nic;

    if (sv3_inbound_arm(p))
        return 1;
    return n && (__atomic_load_n(&rx_desc(n, n->rx_next)->q1, __ATOMIC_ACQUIRE) & RXD_STAT_DD);
}
