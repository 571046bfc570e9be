"""A tiny host on the modelled 82599 wire, for end-to-end tests.

It answers ARP requests for its IPv4 address and ICMP echo requests sent
to it, and builds the frames a test needs to start a conversation:

    host = WireHost(bytes.fromhex("02aa00000001"), "10.0.0.1")
    model.inject(host.arp_request("10.0.0.2"))
    for frame in model.wait_sent(1, 1.0):
        for reply in host.handle(frame):
            model.inject(reply)

Frames it receives with a bad IPv4 or ICMP checksum are counted in
`bad_checksums` and otherwise ignored, so a test also checks the offloads
of whatever sent them.  Echo replies addressed to it are collected in
`echo_replies` as (ident, seq, payload).

The checksum helpers (RFC 1071 ones'-complement sums, with the IPv4 and
IPv6 pseudo-headers of RFC 793/768 and RFC 8200 section 8.1) are shared
with the device model.
"""
import socket
import struct

BROADCAST = b"\xff" * 6
ETH_IP4, ETH_ARP, ETH_IP6 = 0x0800, 0x0806, 0x86DD
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ARP_REQUEST, ARP_REPLY = 1, 2
MIN_FRAME = 60                          # without the 4 FCS bytes


def inet_sum(data, start=0):
    """The folded 16-bit ones'-complement sum of data (not inverted)."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = start + sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def inet_checksum(data, start=0):
    """The value for a checksum field: the inverted sum."""
    return ~inet_sum(data, start) & 0xFFFF


def pseudo_sum(l3, proto, l4_len):
    """Sum of the pseudo-header for an L4 segment behind IP header l3."""
    if l3[0] >> 4 == 4:
        return inet_sum(bytes(l3[12:20]) + struct.pack("!HH", proto, l4_len))
    return inet_sum(bytes(l3[8:40]) + struct.pack("!IxxxB", l4_len, proto))


def parse_ip(frame):
    """(l3, proto, l4, header_ok) of an untagged IPv4 or IPv6 frame, or None.

    l3 and l4 end where the IP length field says (Ethernet padding dropped);
    header_ok is the IPv4 header checksum check (None for IPv6); proto is
    None for an IPv4 fragment.  IPv6 extension headers are not walked."""
    frame = bytes(frame)
    ethertype = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
    if ethertype == ETH_IP4 and len(frame) >= 34 and frame[14] >> 4 == 4:
        ihl, total = (frame[14] & 0xF) * 4, struct.unpack_from("!H", frame, 16)[0]
        if ihl < 20 or total < ihl or 14 + total > len(frame):
            return None
        l3 = frame[14:14 + total]
        fragment = struct.unpack_from("!H", l3, 6)[0] & 0x3FFF
        return l3, None if fragment else l3[9], l3[ihl:], inet_sum(l3[:ihl]) == 0xFFFF
    if ethertype == ETH_IP6 and len(frame) >= 54:
        end = 54 + struct.unpack_from("!H", frame, 18)[0]
        return (frame[14:54], frame[20], frame[54:end], None) if end <= len(frame) else None
    return None


def ip4(text):
    return socket.inet_aton(text)


def ethernet(dst, src, ethertype, payload, pad=True):
    frame = bytes(dst) + bytes(src) + struct.pack("!H", ethertype) + bytes(payload)
    return frame.ljust(MIN_FRAME, b"\0") if pad else frame


def ipv4_packet(src, dst, proto, payload, ident=0, ttl=64):
    """An IPv4 packet (no options) with a correct header checksum."""
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000,
                       ttl, proto, 0, bytes(src), bytes(dst))
    head = head[:10] + struct.pack("!H", inet_checksum(head)) + head[12:]
    return head + bytes(payload)


def icmp_echo(kind, ident, seq, payload):
    msg = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + bytes(payload)
    return msg[:2] + struct.pack("!H", inet_checksum(msg)) + msg[4:]


def arp_packet(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP4, 6, 4, op, sha, spa, tha, tpa)


class WireHost:
    def __init__(self, mac, ip4_addr):
        """mac: 6 bytes or "02:aa:00:00:00:01"; ip4_addr: dotted quad."""
        self.mac = bytes.fromhex(mac.replace(":", "")) if isinstance(mac, str) else bytes(mac)
        self.ip = ip4(ip4_addr)
        self.echo_replies = []
        self.bad_checksums = 0
        self.arp_table = {}

    # -- builders ----------------------------------------------------------
    def arp_request(self, target_ip):
        """Broadcast 'who has target_ip, tell us'."""
        body = arp_packet(ARP_REQUEST, self.mac, self.ip, bytes(6), ip4(target_ip))
        return ethernet(BROADCAST, self.mac, ETH_ARP, body)

    def ping_frame(self, dst_mac, dst_ip, src_ip=None, seq=1, ident=0x5633,
                   payload=b"sv3 wire host ping"):
        """An ICMP echo request from this host (or from src_ip)."""
        src = ip4(src_ip) if src_ip else self.ip
        icmp = icmp_echo(ICMP_ECHO_REQUEST, ident, seq, payload)
        return ethernet(dst_mac, self.mac, ETH_IP4, ipv4_packet(src, ip4(dst_ip), PROTO_ICMP, icmp))

    # -- receiving ---------------------------------------------------------
    def handle(self, frame):
        """Frames this host sends in answer to frame (possibly none)."""
        frame = bytes(frame)
        if len(frame) < 14 or (frame[:6] != self.mac and frame[:6] != BROADCAST):
            return []
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == ETH_ARP:
            return self._arp(frame)
        if ethertype == ETH_IP4:
            return self._ipv4(frame)
        return []

    def _arp(self, frame):
        if len(frame) < 42:
            return []
        _, ptype, _, _, op, sha, spa, _, tpa = struct.unpack_from("!HHBBH6s4s6s4s", frame, 14)
        if ptype != ETH_IP4:
            return []
        self.arp_table[spa] = sha
        if op != ARP_REQUEST or tpa != self.ip:
            return []
        body = arp_packet(ARP_REPLY, self.mac, self.ip, sha, spa)
        return [ethernet(sha, self.mac, ETH_ARP, body)]

    def _ipv4(self, frame):
        parsed = parse_ip(frame)
        if parsed is None:
            return []
        ip, proto, icmp, header_ok = parsed
        if not header_ok:
            self.bad_checksums += 1
            return []
        if proto != PROTO_ICMP or ip[16:20] != self.ip or len(icmp) < 8:
            return []
        if inet_sum(icmp) != 0xFFFF:
            self.bad_checksums += 1
            return []
        kind, _, _, ident, seq = struct.unpack_from("!BBHHH", icmp)
        if kind == ICMP_ECHO_REPLY:
            self.echo_replies.append((ident, seq, icmp[8:]))
            return []
        if kind != ICMP_ECHO_REQUEST:
            return []
        reply = icmp_echo(ICMP_ECHO_REPLY, ident, seq, icmp[8:])
        packet = ipv4_packet(self.ip, ip[12:16], PROTO_ICMP, reply)
        return [ethernet(frame[6:12], self.mac, ETH_IP4, packet)]
