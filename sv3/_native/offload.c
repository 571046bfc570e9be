/* offload.c - software checksum completion and TCP segmentation.
 *
 * The slow path for virtio-net offload metadata (virtio 1.1 5.1.6.2) when
 * the receiving port did not negotiate what a frame asks for:
 *   sv3_csum_complete  finishes a NEEDS_CSUM partial checksum in place;
 *   sv3_gso_segment    cuts one TCP GSO frame into gso_size segments.
 * A GSO frame's headers are parsed here, with a bounds check before every
 * read; its csum_start, csum_offset and hdr_len come from the guest and are
 * not used.  No allocation, no recursion; each segment costs work in
 * proportion to its own bytes.  All multi-byte fields are big-endian.
 */
#include "sv3_impl.h"

#define GSO_TCPV4 1         /* VIRTIO_NET_HDR_GSO_TCPV4 */
#define GSO_TCPV6 4         /* VIRTIO_NET_HDR_GSO_TCPV6 */
#define GSO_ECN 0x80        /* VIRTIO_NET_HDR_GSO_ECN: CWR may be set */
#define ETYPE_IPV4 0x0800
#define ETYPE_IPV6 0x86dd
#define ETYPE_CTAG 0x8100   /* IEEE 802.1Q */
#define ETYPE_STAG 0x88a8   /* IEEE 802.1ad */
#define MAX_VLAN_TAGS 2
#define MAX_EXT_HDRS 8      /* bound on the IPv6 extension header walk */
#define PROTO_HOPOPTS 0
#define PROTO_TCP 6
#define PROTO_ROUTING 43
#define PROTO_DSTOPTS 60
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void wr32(uint8_t *p, uint32_t v)
{
    wr16(p, (uint16_t)(v >> 16));
    wr16(p + 2, (uint16_t)v);
}

/* RFC 1071 2(A), 4.1: add n bytes, as big-endian 16-bit words with an odd
 * last byte padded by a zero, to an unfolded sum.  Adding 32-bit words is
 * the same sum because 2^16 == 1 modulo 0xffff; 64 bits cannot overflow
 * for any frame size sv3 handles.  Each piece of one checksum must start
 * at an even offset of the checksummed range. */
static uint64_t csum_add(uint64_t sum, const uint8_t *p, uint64_t n)
{
    for (; n >= 4; p += 4, n -= 4)
        sum += rd32(p);
    if (n >= 2) {
        sum += rd16(p);
        p += 2;
        n -= 2;
    }
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

/* RFC 1071 4.1: fold the carries back in (end-around carry). */
static uint16_t csum_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/* virtio 1.1 5.1.6.2: the field at csum_start + csum_offset holds the
 * pseudo-header sum; the checksum covers everything from csum_start to the
 * end of the frame.  A zero result goes out as 0xffff (RFC 768 for UDP;
 * the same value in ones-complement arithmetic for TCP). */
int sv3_csum_complete(uint8_t *frame, uint32_t len, uint32_t csum_start, uint32_t csum_offset)
{
    uint16_t c;

    if (!frame || csum_start >= len || (uint64_t)csum_offset + 2 > (uint64_t)len - csum_start)
        return SV3_OFFLOAD_BAD;
    c = (uint16_t)~csum_fold(csum_add(0, frame + csum_start, len - csum_start));
    wr16(frame + csum_start + csum_offset, c ? c : 0xffff);
    return 0;
}

/* Where the headers of one TCP GSO frame are, as offsets into it. */
struct tcp_frame {
    uint32_t l3;    /* IP header */
    uint32_t l4;    /* TCP header */
    uint32_t pay;   /* TCP payload; every byte before it is header */
    uint32_t end;   /* end of the IP datagram (Ethernet padding excluded) */
    uint32_t dst;   /* IPv6: destination address for the pseudo-header */
    int v6;
};

/* IEEE 802.1Q / 802.1ad: at most two tags (S-tag then C-tag) before the
 * EtherType.  Returns the EtherType, or -1 if the frame ends first. */
static int parse_l2(const uint8_t *fr, uint32_t len, struct tcp_frame *f)
{
    uint32_t t = 12, tags;
    uint16_t type;

    for (tags = 0;; tags++, t += 4) {
        if ((uint64_t)t + 2 > len)
            return -1;
        type = rd16(fr + t);
        if ((type != ETYPE_CTAG && type != ETYPE_STAG) || tags == MAX_VLAN_TAGS)
            break;
    }
    f->l3 = t + 2;
    return type;
}

/* RFC 791 3.1: a whole, unfragmented TCP datagram within the frame. */
static int parse_ipv4(const uint8_t *fr, uint32_t len, struct tcp_frame *f)
{
    const uint8_t *ip = fr + f->l3;
    uint32_t ihl, tot;

    if (len - f->l3 < 20 || ip[0] >> 4 != 4)
        return -1;
    ihl = (ip[0] & 15) * 4u;
    tot = rd16(ip + 2);
    if (ihl < 20 || tot < ihl + 20 || tot > len - f->l3)
        return -1;
    if (ip[9] != PROTO_TCP || (rd16(ip + 6) & 0x3fff))    /* MF, offset */
        return -1;
    f->v6 = 0;
    f->l4 = f->l3 + ihl;
    f->end = f->l3 + tot;
    return 0;
}

/* RFC 8200 8.1: while Segments Left > 0 the upper-layer checksum uses the
 * final destination, which a Routing header at offset off names.  Types:
 * 0 (RFC 2460 4.4, last of n addresses), 2 (RFC 6275 6.4, one address),
 * 4 (RFC 8754 2, Segment List[0]).  Another type with Segments Left > 0
 * would be discarded by its receiver (RFC 8200 4.4), so is malformed here.
 * The caller has checked that the whole header is in the frame. */
static int route_dst(const uint8_t *rh, uint32_t off, uint32_t *dst)
{
    uint32_t words = rh[1], left = rh[3];

    if (left == 0)
        return 0;
    if (rh[2] == 0 && !(words & 1) && left <= words / 2)
        *dst = off + 8 + (words / 2 - 1) * 16;
    else if (rh[2] == 2 && words == 2 && left == 1)
        *dst = off + 8;
    else if (rh[2] == 4 && words >= 2)
        *dst = off + 8;
    else
        return -1;
    return 0;
}

/* RFC 8200 3, 4: the IPv6 header, then Hop-by-Hop, Routing and Destination
 * Options headers (length in 8-byte units beyond the first 8) up to TCP.
 * A Fragment header or any other next header is not segmentable. */
static int parse_ipv6(const uint8_t *fr, uint32_t len, struct tcp_frame *f)
{
    const uint8_t *ip = fr + f->l3;
    uint32_t off = f->l3 + 40, n, hl;
    uint8_t nh;

    if (len - f->l3 < 40 || ip[0] >> 4 != 6)
        return -1;
    f->end = off + rd16(ip + 4);
    if (f->end > len)
        return -1;
    f->dst = f->l3 + 24;
    for (nh = ip[6], n = 0; nh != PROTO_TCP; n++, off += hl) {
        if (n == MAX_EXT_HDRS || f->end - off < 8)
            return -1;
        if (nh != PROTO_HOPOPTS && nh != PROTO_ROUTING && nh != PROTO_DSTOPTS)
            return -1;
        hl = (fr[off + 1] + 1u) * 8;
        if (f->end - off < hl)
            return -1;
        if (nh == PROTO_ROUTING && route_dst(fr + off, off, &f->dst))
            return -1;
        nh = fr[off];
    }
    f->v6 = 1;
    f->l4 = off;
    return 0;
}

/* RFC 793 3.1: data offset in 32-bit words, at least 5, header within
 * the IP payload (the IP parsers guarantee l4 <= end). */
static int parse_tcp(const uint8_t *fr, struct tcp_frame *f)
{
    uint32_t doff;

    if (f->end - f->l4 < 20)
        return -1;
    doff = (fr[f->l4 + 12] >> 4) * 4u;
    if (doff < 20 || f->end - f->l4 < doff)
        return -1;
    f->pay = f->l4 + doff;
    return 0;
}

/* virtio 1.1 5.1.6.2: the GSO type names the IP version; check it against
 * the frame itself and locate every header. */
static int parse_gso(const uint8_t *fr, uint32_t len, const struct sv3_frame *meta,
                     struct tcp_frame *f)
{
    int gso = meta->gso_type & ~GSO_ECN, type;

    if (meta->gso_size == 0 || (gso != GSO_TCPV4 && gso != GSO_TCPV6))
        return -1;
    type = parse_l2(fr, len, f);
    if (type == ETYPE_IPV4 && gso == GSO_TCPV4) {
        if (parse_ipv4(fr, len, f))
            return -1;
    } else if (type == ETYPE_IPV6 && gso == GSO_TCPV6) {
        if (parse_ipv6(fr, len, f))
            return -1;
    } else {
        return -1;
    }
    return parse_tcp(fr, f);
}

/* The pseudo-header without its length field: RFC 793 3.1 (IPv4:
 * source, destination, zero, protocol) and RFC 8200 8.1 (IPv6: source,
 * final destination, zeros, next header). */
static uint64_t pseudo_sum(const uint8_t *fr, const struct tcp_frame *f)
{
    if (!f->v6)
        return csum_add(PROTO_TCP, fr + f->l3 + 12, 8);
    return csum_add(csum_add(PROTO_TCP, fr + f->l3 + 8, 16), fr + f->dst, 16);
}

/* Segment k: the headers, then n payload bytes from payload offset off. */
static void put_segment(const uint8_t *fr, const struct tcp_frame *f, uint64_t psum,
                        uint8_t *o, uint32_t k, uint32_t off, uint32_t n, int last)
{
    uint8_t *ip = o + f->l3, *th = o + f->l4;
    uint32_t tcplen = f->pay - f->l4 + n;

    memcpy(o, fr, f->pay);
    memcpy(o + f->pay, fr + f->pay + off, n);
    if (f->v6) {    /* RFC 8200 3: payload length counts extension headers */
        wr16(ip + 4, (uint16_t)(f->l4 - f->l3 - 40 + tcplen));
    } else {        /* RFC 791 3.1; IDs k apart, as if sent one by one */
        wr16(ip + 2, (uint16_t)(f->l4 - f->l3 + tcplen));
        wr16(ip + 4, (uint16_t)(rd16(ip + 4) + k));
        wr16(ip + 10, 0);
        wr16(ip + 10, (uint16_t)~csum_fold(csum_add(0, ip, f->l4 - f->l3)));
    }
    /* RFC 793 3.1, 3.3: sequence numbers modulo 2^32; FIN and PSH end the
     * data so stay on the last segment; RFC 3168 6.1.2: CWR only once. */
    wr32(th + 4, rd32(th + 4) + off);
    if (!last)
        th[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
    if (k)
        th[13] &= (uint8_t)~TCP_CWR;
    wr16(th + 16, 0);
    wr16(th + 16, (uint16_t)~csum_fold(csum_add(psum + tcplen, th, tcplen)));
}

int sv3_gso_segment(const uint8_t *frame, uint32_t len, const struct sv3_frame *meta,
                    uint8_t *out, uint32_t outlen, uint32_t *lens, uint32_t max_segs)
{
    struct tcp_frame f = {0};
    uint32_t mss, plen, nseg, limit, k, n, at = 0;
    uint64_t psum;

    if (!frame || !meta || parse_gso(frame, len, meta, &f))
        return SV3_OFFLOAD_BAD;
    mss = meta->gso_size;
    plen = f.end - f.pay;
    nseg = plen ? (plen - 1) / mss + 1 : 1;
    limit = max_segs < SV3_GSO_MAX_SEGS ? max_segs : SV3_GSO_MAX_SEGS;
    if (nseg > limit || !out || !lens || (uint64_t)nseg * f.pay + plen > outlen)
        return SV3_OFFLOAD_TOO_BIG;
    psum = pseudo_sum(frame, &f);
    for (k = 0; k < nseg; k++) {
        n = k + 1 < nseg ? mss : plen - k * mss;
        put_segment(frame, &f, psum, out + at, k, k * mss, n, k + 1 == nseg);
        lens[k] = f.pay + n;
        at += lens[k];
    }
    return (int)nseg;
}

/* A virtio-net header from a guest or the kernel (virtio 1.1 5.1.6.2), for
 * a frame of flen bytes: clear the fields that do not apply; refuse what the
 * port did not negotiate (p->host_offloads) and what cannot be right (a
 * checksum field past the end, a GSO type other than TCP, GSO without
 * NEEDS_CSUM or with gso_size 0).  0 = usable, SV3_OFFLOAD_BAD = drop. */
int sv3_offload_check(const struct sv3_port *p, struct sv3_frame *m, uint32_t flen)
{
    uint8_t type = m->gso_type & ~SV3_NET_HDR_GSO_ECN;

    m->flags &= SV3_NET_HDR_F_NEEDS_CSUM | SV3_NET_HDR_F_DATA_VALID;
    if (m->flags & SV3_NET_HDR_F_NEEDS_CSUM) {
        if ((uint64_t)m->csum_start + m->csum_offset + 2 > flen)
            return SV3_OFFLOAD_BAD;
        m->flags = SV3_NET_HDR_F_NEEDS_CSUM;
    } else {
        m->csum_start = m->csum_offset = 0;
    }
    if (m->gso_type == 0)
        m->gso_size = m->hdr_len = 0;
    else if ((type != SV3_NET_HDR_GSO_TCPV4 && type != SV3_NET_HDR_GSO_TCPV6) ||
             !(m->flags & SV3_NET_HDR_F_NEEDS_CSUM) || m->gso_size == 0)
        return SV3_OFFLOAD_BAD;
    if (sv3_offload_needs(m) & ~p->host_offloads)
        return SV3_OFFLOAD_BAD;
    return 0;
}
