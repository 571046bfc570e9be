"""Frames with virtio-net offload metadata for tests, built and checked
with scapy (an implementation independent of sv3's C)."""
import random
import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import checksum

from tests.fakes.frontend import DEFAULT_FEATURES, mac

CSUM, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN = 0, 1, 7, 8, 9
HOST_TSO4, HOST_TSO6, HOST_ECN = 11, 12, 13
NEEDS_CSUM, DATA_VALID, GSO_TCPV4, GSO_TCPV6 = 1, 2, 1, 4
SENDER = DEFAULT_FEATURES | sum(1 << b for b in (CSUM, HOST_TSO4, HOST_TSO6, HOST_ECN))
TSO_RECEIVER = DEFAULT_FEATURES | sum(1 << b for b in (GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN))
PLAIN = DEFAULT_FEATURES
A, B, C, D = mac(0xA), mac(0xB), mac(0xC), mac(0xD)
UNKNOWN = mac(0x77)                        # never learned: frames to it are flooded


def net_hdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def parse_hdr(data):
    return dict(zip(("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"),
                    struct.unpack_from("<BBHHHH", data)))


def partial(pkt, l3):
    """Bytes of pkt with its L4 checksum left as Linux leaves it for
    CHECKSUM_PARTIAL: the pseudo-header sum (with the length), not inverted."""
    raw = bytearray(bytes(pkt))
    l4 = 14 + len(l3) - len(l3.payload)
    length = len(raw) - l4
    if l3.version == 4:
        pseudo = bytes(l3)[12:20] + struct.pack(">BBH", 0, 6, length)
    else:
        pseudo = bytes(l3)[8:40] + struct.pack(">IxxxB", length, 6)
    seed = 0xFFFF - checksum(pseudo)                 # scapy's checksum() is already inverted
    struct.pack_into(">H", raw, l4 + 16, seed)
    return bytes(raw), l4


def tso_frame(dst, v6=False, payload_len=20000, mss=1400):
    l3 = IPv6(src="fd55::1", dst="fd55::2") if v6 else IP(src="10.55.0.1", dst="10.55.0.2", id=7)
    payload = bytes(random.Random(5).getrandbits(8) for _ in range(payload_len))
    pkt = Ether(dst=dst, src=A) / l3 / TCP(sport=5001, dport=80, seq=1000, flags="PA") / payload
    raw, l4 = partial(pkt, pkt[1])
    hdr = net_hdr(NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, l4 + 20, mss, l4, 16)
    return raw, hdr, payload


def check_segments(frames, payload, mss, v6):
    """Frames are the TCP segments of payload with correct checksums."""
    assert len(frames) == -(-len(payload) // mss), len(frames)
    got = b""
    for i, f in enumerate(frames):
        pkt = Ether(f)
        tcp = pkt[TCP]
        fixed = pkt.copy()
        del fixed[TCP].chksum
        if not v6:
            del fixed[IP].chksum
            assert pkt[IP].chksum == Ether(bytes(fixed))[IP].chksum
        assert tcp.chksum == Ether(bytes(fixed))[TCP].chksum, "segment %d: bad TCP checksum" % i
        assert tcp.seq == 1000 + i * mss
        got += bytes(tcp.payload)
    assert got == payload
