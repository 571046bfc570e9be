/* afpacket.c - one breath of an AF_PACKET uplink: the kernel's RX ring ->
 * rings to other ports, rings from other ports -> the kernel's TX ring.
 * packet(7) with TPACKET_V2 rings and PACKET_VNET_HDR: every slot is a
 * struct tpacket2_hdr, a virtio_net_hdr, then the frame.  The kernel hands
 * us GSO frames and frames with a partial checksum (a veth peer, GRO):
 * their metadata travels with them; a receiver that does not take it gets
 * them segmented or completed (forward.c), and the kernel takes every kind
 * on TX.  sv3/uplink/afpacket.py sets the socket up.
 *
 * Copy budget: RX slot -> ring record (1 per destination); ring record ->
 * TX slot (1).  One send() per breath flushes the TX ring.
 */
#include <errno.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include "vring.h"

#define TX_DATA_OFF TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
#define ETH_P_8021Q 0x8100

static struct tpacket2_hdr *slot(uint8_t *ring, uint32_t size, uint32_t i)
{
    return (struct tpacket2_hdr *)(ring + (size_t)size * i);
}

static int forward_buf(struct sv3_port *p, uint8_t *frame, uint32_t len, const struct sv3_frame *meta)
{
    struct sv3_seg seg = { frame, len };
    if (len < 14) {
        p->ctr->drop_runt++;
        return 0;
    }
    return sv3_forward(p, &seg, 1, 0, len, frame, meta, 1);
}

/* The kernel took the VLAN tag out of the frame (hardware offload or a
 * vlan-aware driver): put it back, the switch forwards tagged frames. */
static uint8_t *retag(struct sv3_afp *a, const struct tpacket2_hdr *h, const uint8_t *eth,
                      uint32_t *len, struct sv3_frame *meta)
{
    uint8_t *out = a->scratch;
    uint16_t tpid = (h->tp_status & TP_STATUS_VLAN_TPID_VALID) ? h->tp_vlan_tpid : ETH_P_8021Q;

    if (*len < 12 || *len + 4 > SV3_AFP_SCRATCH)
        return NULL;
    memcpy(out, eth, 12);
    out[12] = (uint8_t)(tpid >> 8);
    out[13] = (uint8_t)tpid;
    out[14] = (uint8_t)(h->tp_vlan_tci >> 8);
    out[15] = (uint8_t)h->tp_vlan_tci;
    memcpy(out + 16, eth + 12, *len - 12);
    *len += 4;
    if (meta->flags & SV3_NET_HDR_F_NEEDS_CSUM)
        meta->csum_start += 4;
    if (meta->hdr_len)
        meta->hdr_len += 4;
    return out;
}

/* One received slot.  Returns 1 to keep it (its ring is full for now). */
static int rx_slot(struct sv3_port *p, struct sv3_afp *a, struct tpacket2_hdr *h)
{
    uint8_t *frame = (uint8_t *)h + h->tp_mac;
    uint32_t len = h->tp_snaplen;
    struct sv3_frame meta = {0};

    if (h->tp_mac < TX_DATA_OFF + SV3_NET_HDR_LEN || (uint64_t)h->tp_mac + len > a->slot_size ||
        len < h->tp_len) {
        p->ctr->drop_oversize++;               /* cut to the slot: never forwarded */
        return 0;
    }
    sv3_net_hdr_get(&meta, frame - SV3_NET_HDR_LEN);
    if (h->tp_status & TP_STATUS_VLAN_VALID) {
        frame = retag(a, h, frame, &len, &meta);
        if (!frame) {
            p->ctr->drop_oversize++;
            return 0;
        }
    }
    if (sv3_offload_check(p, &meta, len)) {
        p->ctr->drop_bad_header++;                 /* e.g. UDP GSO: not taken */
        return 0;
    }
    if (forward_buf(p, frame, len, &meta))
        return 1;
    if (meta.flags & SV3_NET_HDR_F_NEEDS_CSUM || meta.gso_type)
        p->ctr->offload_frames++;
    return 0;
}

static int afp_rx(struct sv3_port *p, struct sv3_afp *a)
{
    int done = 0;

    while (done < p->batch) {
        struct tpacket2_hdr *h = slot(a->rx, a->slot_size, a->rx_pos);
        if (!(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
            break;
        if (rx_slot(p, a, h))
            break;
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        a->rx_pos = a->rx_pos + 1 == a->rx_slots ? 0 : a->rx_pos + 1;
        done++;
    }
    sv3_publish_all(p);
    return done;
}

/* Hand the queued TX slots to the kernel.  A link that went down stops
 * the uplink at once (rtnetlink tells Python when it is back). */
static void afp_send(struct sv3_afp *a)
{
    if (!a->tx_queued)
        return;
    if (sendto(a->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0) {
        a->tx_queued = 0;
        return;
    }
    a->send_errno = errno;
    if (errno == ENETDOWN || errno == ENXIO)
        a->link_up = 0;
}

/* One ring record into the next free TX slot: 1 = done, 0 = no free slot. */
static int tx_one(struct sv3_port *p, struct sv3_afp *a, const struct sv3_frame *f)
{
    struct tpacket2_hdr *h = slot(a->tx, a->slot_size, a->tx_pos);
    uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
    uint8_t *data = (uint8_t *)h + TX_DATA_OFF;

    if (st == TP_STATUS_WRONG_FORMAT) {
        p->ctr->drop_bad_header++;             /* the kernel refused the slot's last frame */
        h->tp_status = TP_STATUS_AVAILABLE;    /* counted once, even if this frame is dropped */
    }
    else if (st != TP_STATUS_AVAILABLE)
        return 0;
    if ((uint64_t)TX_DATA_OFF + SV3_NET_HDR_LEN + f->len > a->slot_size || sv3_above_mtu(p, f)) {
        p->ctr->drop_oversize++;
        return 1;
    }
    sv3_net_hdr_put(data, f, f->flags & SV3_NET_HDR_F_NEEDS_CSUM);
    memcpy(data + SV3_NET_HDR_LEN, f + 1, f->len);
    h->tp_len = SV3_NET_HDR_LEN + f->len;
    __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
    a->tx_pos = a->tx_pos + 1 == a->tx_slots ? 0 : a->tx_pos + 1;
    a->tx_queued++;
    p->ctr->tx_frames++;
    p->ctr->tx_bytes += f->len;
    return 1;
}

static int afp_tx(struct sv3_port *p, struct sv3_afp *a)
{
    const struct sv3_frame *f;
    uint32_t i;
    int done = 0, room = 1;

    if (!a->link_up)
        return sv3_discard_inbound(p, &p->ctr->drop_link_down);
    for (i = 0; i < p->nin && room; i++) {
        while (done < p->batch && (f = sv3_ring_peek(&p->inb[i])) != NULL) {
            if (!(room = tx_one(p, a, f)))
                break;                     /* TX ring full: frames wait in the rings */
            sv3_ring_consume(&p->inb[i], f);
            done++;
        }
        sv3_ring_release(&p->inb[i]);
    }
    afp_send(a);
    return done;
}

int sv3_afp_run(struct sv3_port *p)
{
    struct sv3_afp *a = p->afp;
    if (!a)
        return 0;
    return afp_rx(p, a) + afp_tx(p, a);
}

/* Before sleeping (the socket's POLLIN wakes us for RX): 1 = work pending. */
int sv3_afp_arm(struct sv3_port *p)
{
    struct sv3_afp *a = p->afp;

    if (sv3_inbound_arm(p))
        return 1;
    return a && (__atomic_load_n(&slot(a->rx, a->slot_size, a->rx_pos)->tp_status, __ATOMIC_ACQUIRE) &
                 TP_STATUS_USER);
}
