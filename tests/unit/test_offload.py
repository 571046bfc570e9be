"""Offload slow path (sv3/_native/offload.c): checksum completion and TCP
segmentation, checked against scapy as the independent implementation.

Frames under test sit flush against a PROT_NONE page, so a read past the
length handed to the C core faults; output buffers carry a canary region
past outlen (and lens past max_segs) that must come back untouched."""
import ctypes
import mmap
import random
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting, PadN, RouterAlert,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from sv3._native import ffi, lib

BAD, TOO_BIG = -1, -2              # SV3_OFFLOAD_BAD, SV3_OFFLOAD_TOO_BIG
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_ECN = 0, 1, 3, 4, 0x80
MAX_SEGS = lib.SV3_GSO_MAX_SEGS
FIN, PSH, CWR = 0x01, 0x08, 0x80
MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = dict(src="192.0.2.1", dst="198.51.100.7")
V6 = dict(src="2001:db8::1", dst="2001:db8::2")
HOPS = ["2001:db8:1::a", "2001:db8:1::b", "2001:db8:1::c"]
TCP_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123456, 654321)), ("NOP", None), ("WScale", 7)]
IP_OPTS = [IPOption_NOP(), IPOption_Router_Alert()]
CANARY = 0xA5
GUARD = 64
OUTLEN = 256 * 1024
SOME = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class TailBuffer:
    """Memory whose end touches a PROT_NONE page: place() puts bytes flush
    against it, so the C core reading one byte past them segfaults."""

    def __init__(self, size):
        self.size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        self.map = mmap.mmap(-1, self.size + mmap.PAGESIZE)
        self.base = ffi.from_buffer("uint8_t[]", self.map)
        guard = int(ffi.cast("uintptr_t", self.base)) + self.size
        assert _libc.mprotect(guard, mmap.PAGESIZE, 0) == 0

    def place(self, data):
        start = self.size - len(data)
        self.map[start:self.size] = data
        return self.base + start

    def read(self, n):
        return self.map[self.size - n:self.size]


FRAMES = TailBuffer(128 * 1024)


# -- independent helpers (RFC 1071 in Python) ----------------------------------

def ocsum(data, start=0):
    """Folded ones-complement sum of big-endian 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    s = start + sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_seed(ip_src, ip_dst, proto, l4len):
    """What Linux puts in the checksum field for CHECKSUM_PARTIAL: the folded,
    uncomplemented pseudo-header sum (RFC 793 / RFC 8200 8.1 layouts)."""
    if len(ip_src) == 4:
        ph = ip_src + ip_dst + bytes([0, proto]) + l4len.to_bytes(2, "big")
    else:
        ph = ip_src + ip_dst + l4len.to_bytes(4, "big") + bytes([0, 0, 0, proto])
    return ocsum(ph)


# -- packet construction ---------------------------------------------------------

def ext_header(kind, rng):
    """One IPv6 extension header and the final destination it implies (or None)."""
    if kind == "hbh":
        return IPv6ExtHdrHopByHop(options=[RouterAlert()]), None
    if kind == "dst":
        return IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * rng.randrange(0, 20))]), None
    if kind == "rt0":
        addrs = HOPS[:rng.randrange(1, 4)]
        left = rng.randrange(0, len(addrs) + 1)
        return IPv6ExtHdrRouting(type=0, addresses=addrs, segleft=left), (addrs[-1] if left else None)
    if kind == "rt2":
        return IPv6ExtHdrRouting(type=2, addresses=["2001:db8:2::9"], segleft=1), "2001:db8:2::9"
    if kind == "srh":
        addrs = HOPS[:rng.randrange(1, 4)]
        left = rng.randrange(0, len(addrs))
        return IPv6ExtHdrSegmentRouting(addresses=addrs, segleft=left), (addrs[0] if left else None)
    raise ValueError(kind)


def build(v6=False, vlans=0, l3opts=(), tcpopts=False, flags="PA", payload=b"", seq=1000,
          ipid=77, l4=None, seed=0):
    """An Ethernet frame built by scapy; returns (bytes, final IPv6 dst).
    l3opts: IPv4 options on/off (truthy), or a list of IPv6 header kinds."""
    rng = random.Random(seed)
    p = Ether(**MACS)
    if vlans == 1:
        p = p / Dot1Q(vlan=7, prio=3)
    elif vlans == 2:
        p = p / Dot1AD(vlan=100) / Dot1Q(vlan=200)
    final = None
    if v6:
        p = p / IPv6(hlim=63, fl=0x12345, **V6)
        for kind in l3opts:
            hdr, fin = ext_header(kind, rng)
            p = p / hdr
            final = fin or final
    else:
        p = p / IP(id=ipid, flags="DF", ttl=61, options=list(IP_OPTS) if l3opts else [], **V4)
    if l4 is None:
        l4 = TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, window=501,
                 options=list(TCP_OPTS) if tcpopts else [])
    p = p / l4
    if payload:
        p = p / Raw(payload)
    return bytes(p), final or (V6["dst"] if v6 else V4["dst"])


def expected_segments(frame, mss):
    """Segment with scapy: copy the headers, set seq/id/flags, let scapy
    recompute every length and checksum."""
    pkt = Ether(frame)
    tcp = pkt[TCP]
    data = bytes(tcp.payload)
    if pkt.haslayer("Padding"):
        data = data[:len(data) - len(pkt["Padding"].load)]
    n = max(1, -(-len(data) // mss))
    if n > MAX_SEGS:
        return TOO_BIG
    segs = []
    for k in range(n):
        seg = pkt.copy()
        t = seg[TCP]
        t.remove_payload()
        piece = data[k * mss:(k + 1) * mss]
        if piece:
            t.add_payload(Raw(piece))
        t.seq = (tcp.seq + k * mss) % 2 ** 32
        fl = int(tcp.flags)
        if k < n - 1:
            fl &= ~(FIN | PSH)
        if k:
            fl &= ~CWR
        t.flags = fl
        del t.chksum
        if seg.haslayer(IP):
            seg[IP].id = (seg[IP].id + k) % 2 ** 16
            del seg[IP].len
            del seg[IP].chksum
        else:
            del seg[IPv6].plen
        segs.append(bytes(seg))
    return segs


# -- calling the C core ----------------------------------------------------------

def segment(frame, gso_type, gso_size, max_segs=MAX_SEGS, outlen=OUTLEN, nbytes=None,
            csum_start=0, csum_offset=0, hdr_len=0):
    """sv3_gso_segment on frame[:nbytes]; checks that nothing was written
    past outlen or lens[max_segs - 1], and nothing at all on an error."""
    nbytes = len(frame) if nbytes is None else nbytes
    src = FRAMES.place(frame[:nbytes])
    meta = ffi.new("struct sv3_frame *", dict(
        len=nbytes, gso_type=gso_type, gso_size=gso_size, flags=1,
        csum_start=csum_start, csum_offset=csum_offset, hdr_len=hdr_len))
    out = ffi.new("uint8_t[]", outlen + GUARD)
    ffi.memmove(out, bytes([CANARY]) * (outlen + GUARD), outlen + GUARD)
    lens = ffi.new("uint32_t[]", [0xDEADBEEF] * (max_segs + 4))
    rc = lib.sv3_gso_segment(src, nbytes, meta, out, outlen, lens, max_segs)
    whole = ffi.buffer(out, outlen + GUARD)[:]
    assert whole[outlen:] == bytes([CANARY]) * GUARD, "wrote past outlen"
    assert list(lens)[max_segs:] == [0xDEADBEEF] * 4, "wrote past lens[max_segs - 1]"
    if rc < 0:
        assert rc in (BAD, TOO_BIG)
        assert whole == bytes([CANARY]) * (outlen + GUARD), "wrote on error"
        assert list(lens) == [0xDEADBEEF] * (max_segs + 4)
        return rc
    assert 1 <= rc <= min(max_segs, MAX_SEGS)
    assert sum(lens[0:rc]) <= outlen
    segs, at = [], 0
    for k in range(rc):
        segs.append(whole[at:at + lens[k]])
        at += lens[k]
    return segs


def complete(frame, csum_start, csum_offset, nbytes=None):
    nbytes = len(frame) if nbytes is None else nbytes
    ptr = FRAMES.place(frame[:nbytes])
    rc = lib.sv3_csum_complete(ptr, nbytes, csum_start, csum_offset)
    return rc, FRAMES.read(nbytes)


def l4_offset(frame):
    pkt = Ether(frame)
    l4 = pkt[TCP] if pkt.haslayer(TCP) else pkt[UDP]
    return len(frame) - len(bytes(l4)), l4


def with_seed(frame, v6, final_dst):
    """The frame as a Linux guest hands it over with NEEDS_CSUM: the L4
    checksum field holds the pseudo-header seed.  Returns it, csum_start,
    csum_offset and the checksum scapy computed."""
    off, l4 = l4_offset(frame)
    proto, field = (6, 16) if isinstance(l4, TCP) else (17, 6)
    pkt = Ether(frame)
    ip = pkt[IPv6] if v6 else pkt[IP]
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = socket.inet_pton(fam, ip.src), socket.inet_pton(fam, final_dst)
    seed = pseudo_seed(src, dst, proto, len(frame) - off)
    good = int.from_bytes(frame[off + field:off + field + 2], "big")
    partial = frame[:off + field] + seed.to_bytes(2, "big") + frame[off + field + 2:]
    return partial, off, field, good


# -- checksum completion ---------------------------------------------------------

def test_csum_rfc1071_example():
    # RFC 1071 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, checksum 220d.
    data = bytes.fromhex("0001f203f4f5f6f7") + b"\0\0"
    rc, got = complete(data, 0, 8)
    assert rc == 0
    assert got == bytes.fromhex("0001f203f4f5f6f7220d")


def test_csum_odd_length_pads_with_zero():
    data = bytes.fromhex("aa000000") + b"\x12\x34\x56"
    rc, got = complete(data, 2, 0)       # range 00 00 12 34 56 -> 0x1234 + 0x5600
    assert rc == 0
    assert got[2:4] == (~(0x1234 + 0x5600) & 0xFFFF).to_bytes(2, "big")
    assert got[:2] + got[4:] == data[:2] + data[4:]


def test_csum_zero_result_is_stored_as_ffff():
    rc, got = complete(b"\xff\xff\x00\x00", 0, 2)
    assert rc == 0 and got == b"\xff\xff\xff\xff"


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_csum_zero_result_against_scapy(proto):
    # Adjust one payload word so the correct checksum is 0: scapy writes 0
    # for TCP and 0xffff for UDP (RFC 768); sv3 writes 0xffff for both.
    l4 = TCP(sport=1, dport=2, seq=5) if proto == "tcp" else UDP(sport=1, dport=2)
    frame, final = build(l4=l4, payload=b"\x10\x20" * 20)
    off, _ = l4_offset(frame)
    field = 16 if proto == "tcp" else 6
    good = int.from_bytes(frame[off + field:off + field + 2], "big")
    word_at = len(frame) - 2
    word = int.from_bytes(frame[word_at:], "big")
    fixed = ocsum(b"", word + good)
    pkt = Ether(frame[:word_at] + fixed.to_bytes(2, "big"))
    del pkt[TCP if proto == "tcp" else UDP].chksum
    frame = bytes(pkt)
    partial, off, field, good = with_seed(frame, False, final)
    assert good == (0 if proto == "tcp" else 0xFFFF)
    rc, got = complete(partial, off, field)
    assert rc == 0
    assert got == frame[:off + field] + b"\xff\xff" + frame[off + field + 2:]


@SOME
@given(v6=st.booleans(), udp=st.booleans(), vlans=st.sampled_from([0, 1, 2]),
       opts=st.booleans(), exts=st.lists(st.sampled_from(["hbh", "dst", "rt0", "rt2", "srh"]), max_size=3),
       size=st.integers(0, 9001), seed=st.integers(0, 2 ** 32))
def test_csum_matches_scapy(v6, udp, vlans, opts, exts, size, seed):
    payload = random.Random(seed).randbytes(size)
    l4 = UDP(sport=53, dport=5353) if udp else TCP(sport=1, dport=2, flags="PA", options=TCP_OPTS if opts else [])
    frame, final = build(v6=v6, vlans=vlans, l3opts=exts if v6 else opts, l4=l4, payload=payload, seed=seed)
    partial, off, field, good = with_seed(frame, v6, final)
    rc, got = complete(partial, off, field)
    assert rc == 0
    want = good or 0xFFFF
    assert got == frame[:off + field] + want.to_bytes(2, "big") + frame[off + field + 2:]


@pytest.mark.parametrize("length,start,offset", [
    (0, 0, 0), (10, 10, 0), (10, 11, 0), (10, 0, 9), (10, 8, 1), (10, 9, 0),
    (10, 0xFFFFFFFF, 0), (10, 0, 0xFFFFFFFF), (10, 2, 0xFFFFFFFE), (10, 0xFFFFFFFE, 2),
])
def test_csum_bad_ranges_write_nothing(length, start, offset):
    data = bytes(range(10, 10 + length))
    rc, got = complete(data, start, offset)
    assert rc == BAD
    assert got == data


@pytest.mark.parametrize("length,start,offset", [(2, 0, 0), (10, 8, 0), (10, 0, 8), (11, 3, 6)])
def test_csum_edge_ranges_accepted(length, start, offset):
    data = bytes(range(30, 30 + length))
    rc, got = complete(data, start, offset)
    assert rc == 0
    seeded = ocsum(data[start:])
    assert got[start + offset:start + offset + 2] == ((~seeded & 0xFFFF) or 0xFFFF).to_bytes(2, "big")
    assert got[:start + offset] + got[start + offset + 2:] == data[:start + offset] + data[start + offset + 2:]


@SOME
@given(data=st.binary(min_size=0, max_size=200), start=st.integers(0, 2 ** 32 - 1),
       offset=st.integers(0, 2 ** 32 - 1), small=st.booleans())
def test_csum_random_ranges(data, start, offset, small):
    if small:
        start, offset = start % 256, offset % 256
    rc, got = complete(data, start, offset)
    if start < len(data) and offset + 2 <= len(data) - start:
        assert rc == 0
        want = (~ocsum(data[start:]) & 0xFFFF) or 0xFFFF
        assert got[start + offset:start + offset + 2] == want.to_bytes(2, "big")
        assert got[:start + offset] == data[:start + offset]
        assert got[start + offset + 2:] == data[start + offset + 2:]
    else:
        assert rc == BAD and got == data


# -- segmentation against scapy --------------------------------------------------

def check(frame, gso_type, mss, **kw):
    want = expected_segments(frame, mss)
    got = segment(frame, gso_type, mss, **kw)
    if want == TOO_BIG:
        assert got == TOO_BIG
    else:
        assert got == want, "%d segments expected, got %s" % (len(want), got if isinstance(got, int) else len(got))
    return got


def test_segments_qinq_ipv4_options_and_flags():
    payload = bytes(range(256)) * 14
    frame, _ = build(vlans=2, l3opts=True, tcpopts=True, flags="FPAEC", payload=payload)
    segs = check(frame, GSO_TCPV4 | GSO_ECN, 1000)
    assert len(segs) == 4
    A, E = 0x10, 0x40
    assert [int(Ether(s)[TCP].flags) for s in segs] == [A | E | CWR, A | E, A | E, FIN | PSH | A | E]
    assert [Ether(s)[IP].id for s in segs] == [77, 78, 79, 80]
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == payload


def test_segments_ipv6_extension_headers_and_routing_destination():
    payload = random.Random(1).randbytes(5000)
    frame, final = build(v6=True, vlans=1, l3opts=["hbh", "rt0", "dst"], tcpopts=True,
                         flags="FPA", payload=payload, seed=5)
    rh = Ether(frame)[IPv6ExtHdrRouting]
    assert (rh.segleft, len(rh.addresses)) == (2, 3) and final == HOPS[2]
    segs = check(frame, GSO_TCPV6, 1400)
    assert [len(Ether(s)[TCP].payload) for s in segs] == [1400, 1400, 1400, 800]


@pytest.mark.parametrize("kind", ["rt2", "srh"])
def test_segments_ipv6_other_routing_types(kind):
    frame, _ = build(v6=True, l3opts=[kind], payload=b"z" * 3000, seed=5)
    check(frame, GSO_TCPV6, 1200)


def test_routing_type_unknown_with_segments_left_zero_is_fine():
    pkt = (Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrRouting(type=3, addresses=HOPS[:1], segleft=0)
           / TCP(seq=3) / Raw(b"q" * 100))
    assert len(check(bytes(pkt), GSO_TCPV6, 30)) == 4


def test_single_segment_gets_correct_checksums():
    # A GSO frame as a guest sends it: IPv4 checksum 0, TCP field = seed.
    frame, final = build(payload=b"a" * 500, tcpopts=True)
    partial, off, field, _ = with_seed(frame, False, final)
    partial = partial[:24] + b"\0\0" + partial[26:]
    assert partial != frame
    assert segment(partial, GSO_TCPV4, 1460) == [frame]


@pytest.mark.parametrize("v6", [False, True])
def test_zero_payload_is_one_segment(v6):
    frame, _ = build(v6=v6, flags="FA")
    broken = bytearray(frame)
    broken[-3] ^= 0xFF                            # TCP checksum low byte
    if not v6:
        broken[25] ^= 0xFF                        # IPv4 header checksum low byte
    assert segment(bytes(broken), GSO_TCPV6 if v6 else GSO_TCPV4, 100) == [frame]


def test_ethernet_padding_is_left_out():
    frame, _ = build(payload=b"p" * 10)
    segs = segment(frame + b"\0" * 30, GSO_TCPV4, 4)
    assert segs == expected_segments(frame, 4)
    assert sum(map(len, segs)) == 3 * (len(frame) - 10) + 10


def test_sequence_and_id_wrap():
    frame, _ = build(payload=b"w" * 300, seq=2 ** 32 - 100, ipid=0xFFFE)
    segs = check(frame, GSO_TCPV4, 60)
    assert [Ether(s)[TCP].seq for s in segs] == [2 ** 32 - 100, 2 ** 32 - 40, 20, 80, 140]
    assert [Ether(s)[IP].id for s in segs] == [0xFFFE, 0xFFFF, 0, 1, 2]


def test_payload_an_exact_multiple_of_mss():
    frame, _ = build(v6=True, payload=b"m" * 3000)
    assert [len(s) for s in check(frame, GSO_TCPV6, 1000)] == [14 + 40 + 20 + 1000] * 3


def test_hints_are_ignored():
    frame, _ = build(vlans=1, l3opts=True, payload=b"h" * 2000)
    plain = segment(frame, GSO_TCPV4, 700)
    assert segment(frame, GSO_TCPV4, 700, csum_start=3, csum_offset=60000, hdr_len=9) == plain
    assert segment(frame, GSO_TCPV4, 700, csum_start=0xFFFF, csum_offset=0xFFFF, hdr_len=0xFFFF) == plain


def test_segment_limits():
    frame, _ = build(payload=b"x" * 1000)
    assert segment(frame, GSO_TCPV4, 1, max_segs=128) == TOO_BIG
    assert segment(frame, GSO_TCPV4, 10, max_segs=100) == expected_segments(frame, 10)
    assert segment(frame, GSO_TCPV4, 10, max_segs=99) == TOO_BIG
    assert segment(frame, GSO_TCPV4, 10, max_segs=0) == TOO_BIG
    big, _ = build(payload=b"x" * 129)
    assert segment(big, GSO_TCPV4, 1, max_segs=1000) == TOO_BIG       # SV3_GSO_MAX_SEGS caps max_segs
    exact, _ = build(payload=b"x" * 128)
    assert len(segment(exact, GSO_TCPV4, 1, max_segs=1000)) == 128


def test_outlen_limits():
    frame, _ = build(payload=b"o" * 1000)
    need = 4 * (len(frame) - 1000) + 1000
    assert len(segment(frame, GSO_TCPV4, 250, outlen=need)) == 4
    assert segment(frame, GSO_TCPV4, 250, outlen=need - 1) == TOO_BIG
    for tiny in (0, 1, 54, 100):
        assert segment(frame, GSO_TCPV4, 250, outlen=tiny) == TOO_BIG


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v6=st.booleans(), vlans=st.sampled_from([0, 1, 2]), opts=st.booleans(), tcpopts=st.booleans(),
       exts=st.lists(st.sampled_from(["hbh", "dst", "rt0", "rt2", "srh"]), max_size=3),
       flags=st.integers(0, 255), size=st.integers(0, 64000), mss=st.integers(1, 9000),
       fit=st.booleans(), ecn=st.booleans(), seq=st.integers(0, 2 ** 32 - 1),
       ipid=st.integers(0, 0xFFFF), seed=st.integers(0, 2 ** 32))
def test_segmentation_matches_scapy(v6, vlans, opts, tcpopts, exts, flags, size, mss, fit, ecn, seq, ipid, seed):
    if fit:          # mostly exercise real segmentation rather than TOO_BIG
        mss = max(mss, -(-size // MAX_SEGS))
    payload = random.Random(seed).randbytes(size)
    frame, _ = build(v6=v6, vlans=vlans, l3opts=exts if v6 else opts, tcpopts=tcpopts, flags=flags,
                     payload=payload, seq=seq, ipid=ipid, seed=seed)
    gso = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    got = check(frame, gso, mss, csum_start=seed & 0xFFFF, csum_offset=seq & 0xFFFF, hdr_len=ipid)
    if got != TOO_BIG:
        assert b"".join(s[len(s) - len(Ether(s)[TCP].payload):] for s in got) == payload


# -- malformed input -------------------------------------------------------------

def v4_frame(payload=b"d" * 300, **kw):
    return bytearray(build(payload=payload, **kw)[0])


def v6_frame(payload=b"d" * 300, **kw):
    return bytearray(build(v6=True, payload=payload, **kw)[0])


@pytest.mark.parametrize("gso", [GSO_NONE, 2, GSO_UDP, 5, GSO_ECN, GSO_UDP | GSO_ECN, 0x41, 0xFF])
def test_gso_types_other_than_tcp_are_bad(gso):
    assert segment(bytes(v4_frame()), gso, 100) == BAD
    assert segment(bytes(v6_frame()), gso, 100) == BAD


def test_gso_type_must_match_ip_version():
    assert segment(bytes(v4_frame()), GSO_TCPV6, 100) == BAD
    assert segment(bytes(v6_frame()), GSO_TCPV4, 100) == BAD
    assert segment(bytes(v6_frame()), GSO_TCPV4 | GSO_ECN, 100) == BAD


def test_gso_size_zero_is_bad():
    assert segment(bytes(v4_frame()), GSO_TCPV4, 0) == BAD
    assert segment(bytes(v4_frame(payload=b"")), GSO_TCPV4, 0) == BAD


@pytest.mark.parametrize("v6", [False, True])
def test_udp_gso_frame_is_bad(v6):
    frame, _ = build(v6=v6, l4=UDP(sport=1, dport=2), payload=b"u" * 3000)
    assert segment(frame, GSO_TCPV6 if v6 else GSO_TCPV4, 1000) == BAD


def test_non_ip_and_too_many_vlan_tags_are_bad():
    arp = bytearray(v4_frame())
    arp[12:14] = b"\x08\x06"
    assert segment(bytes(arp), GSO_TCPV4, 100) == BAD
    three = bytes(Ether(**MACS) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(**V4) / TCP() / Raw(b"t" * 99))
    assert segment(three, GSO_TCPV4, 10) == BAD
    assert segment(bytes(v4_frame(vlans=2)), GSO_TCPV4, 100) != BAD


@pytest.mark.parametrize("n", range(0, 14 + 20 + 20))
def test_truncated_headers_are_bad(n):
    # Every cut inside Ethernet + IPv4 + TCP headers (with len = n).
    frame = bytes(v4_frame(payload=b""))
    assert segment(frame, GSO_TCPV4, 100, nbytes=n) == BAD


@pytest.mark.parametrize("n", [0, 13, 14, 30, 53, 54, 60, 73])
def test_truncated_ipv6_headers_are_bad(n):
    frame = bytes(v6_frame(payload=b""))
    assert segment(frame, GSO_TCPV6, 100, nbytes=n) == BAD


def test_ipv4_length_beyond_frame_is_bad():
    frame = bytes(v4_frame())
    assert segment(frame, GSO_TCPV4, 100, nbytes=len(frame) - 1) == BAD


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_ihl_below_5_is_bad(ihl):
    f = v4_frame()
    f[14] = 0x40 | ihl
    assert segment(bytes(f), GSO_TCPV4, 100) == BAD


def test_ipv4_ihl_past_total_length_is_bad():
    f = v4_frame(payload=b"")
    f[14] = 0x4F                                 # 60-byte header in a 40-byte datagram
    assert segment(bytes(f), GSO_TCPV4, 100) == BAD


@pytest.mark.parametrize("total", [0, 20, 39])
def test_ipv4_total_length_too_small_is_bad(total):
    f = v4_frame()
    f[16:18] = total.to_bytes(2, "big")
    assert segment(bytes(f), GSO_TCPV4, 100) == BAD


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x1FFF, 0x3000])
def test_ipv4_fragments_are_bad(frag):
    f = v4_frame()
    f[20:22] = frag.to_bytes(2, "big")           # MF and/or fragment offset (DF cleared)
    assert segment(bytes(f), GSO_TCPV4, 100) == BAD


def test_ip_version_must_match_ethertype():
    f = v4_frame()
    f[14] = 0x65
    assert segment(bytes(f), GSO_TCPV4, 100) == BAD
    g = v6_frame()
    g[14] = 0x40 | (g[14] & 0x0F)
    assert segment(bytes(g), GSO_TCPV6, 100) == BAD


def test_ipv6_fragment_header_is_bad():
    frame = bytes(Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrFragment(m=0, offset=0, id=5) / TCP() / Raw(b"f" * 500))
    assert segment(frame, GSO_TCPV6, 100) == BAD


def test_ipv6_next_header_other_than_tcp_is_bad():
    frame = bytes(Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrHopByHop() / UDP() / Raw(b"f" * 500))
    assert segment(frame, GSO_TCPV6, 100) == BAD


def test_ipv6_payload_length_beyond_frame_is_bad():
    frame = bytes(v6_frame())
    assert segment(frame, GSO_TCPV6, 100, nbytes=len(frame) - 1) == BAD


def test_ipv6_extension_header_running_past_the_end_is_bad():
    f = v6_frame(l3opts=["hbh"], payload=b"")
    f[14 + 40 + 1] = 200                          # Hdr Ext Len: 1608 bytes
    assert segment(bytes(f), GSO_TCPV6, 100) == BAD
    g = v6_frame(l3opts=["dst"], payload=b"")
    g[18:20] = (4).to_bytes(2, "big")             # payload length ends inside the header
    assert segment(bytes(g), GSO_TCPV6, 100) == BAD
    ext_len = (g[14 + 40 + 1] + 1) * 8
    g[18:20] = (ext_len + 19).to_bytes(2, "big")  # ... or inside the TCP header after it
    assert segment(bytes(g), GSO_TCPV6, 100) == BAD
    g[18:20] = (ext_len + 20).to_bytes(2, "big")
    assert len(segment(bytes(g), GSO_TCPV6, 100)) == 1


def test_ipv6_extension_header_chain_is_bounded():
    p = Ether(**MACS) / IPv6(**V6)
    for _ in range(20):
        p = p / IPv6ExtHdrDestOpt()
    frame = bytes(p / TCP() / Raw(b"c" * 200))
    assert segment(frame, GSO_TCPV6, 100) == BAD


def test_malformed_routing_headers_are_bad():
    unknown = bytes(Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrRouting(type=3, addresses=HOPS[:1], segleft=1)
                    / TCP() / Raw(b"r" * 200))
    assert segment(unknown, GSO_TCPV6, 100) == BAD
    too_far = bytes(Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrRouting(type=0, addresses=HOPS[:2], segleft=3)
                    / TCP() / Raw(b"r" * 200))
    assert segment(too_far, GSO_TCPV6, 100) == BAD
    two_homes = bytes(Ether(**MACS) / IPv6(**V6) / IPv6ExtHdrRouting(type=2, addresses=HOPS[:2], segleft=1)
                      / TCP() / Raw(b"r" * 200))
    assert segment(two_homes, GSO_TCPV6, 100) == BAD


def raw_routing(words, rtype, left, body):
    """An IPv6 frame with a hand-made Routing header (scapy would fix its length)."""
    rh = bytes([6, words, rtype, left]) + b"\0" * 4 + body
    assert len(rh) == (words + 1) * 8
    tcp = bytes(TCP(seq=9, flags="A"))[:16] + b"\0" * 4
    ip6 = IPv6(nh=43, plen=len(rh) + len(tcp) + 100, **V6)
    return bytes(Ether(**MACS) / ip6) + rh + tcp + b"b" * 100


def test_routing_header_lengths_must_fit_the_type():
    addr = socket.inet_pton(socket.AF_INET6, HOPS[0])
    assert segment(raw_routing(3, 0, 1, addr + b"\0" * 8), GSO_TCPV6, 50) == BAD      # type 0, odd length
    assert segment(raw_routing(0, 0, 1, b""), GSO_TCPV6, 50) == BAD                    # type 0, no address
    assert segment(raw_routing(0, 4, 1, b""), GSO_TCPV6, 50) == BAD                    # SRH, no segment list
    assert segment(raw_routing(4, 2, 1, addr * 2), GSO_TCPV6, 50) == BAD               # type 2, two addresses
    assert segment(raw_routing(2, 2, 2, addr), GSO_TCPV6, 50) == BAD                   # type 2, Segments Left 2
    good = raw_routing(2, 0, 1, addr)
    assert len(check(good, GSO_TCPV6, 50)) == 2


@pytest.mark.parametrize("v6", [False, True])
def test_tcp_data_offset_past_the_end_is_bad(v6):
    f = v6_frame(payload=b"") if v6 else v4_frame(payload=b"")
    tcp = len(f) - 20
    f[tcp + 12] = 0xF0                            # 60-byte TCP header in 20 bytes
    assert segment(bytes(f), GSO_TCPV6 if v6 else GSO_TCPV4, 100) == BAD
    f[tcp + 12] = 0x40                            # data offset 4 < 5
    assert segment(bytes(f), GSO_TCPV6 if v6 else GSO_TCPV4, 100) == BAD


# -- robustness ------------------------------------------------------------------

META = dict(gso_type=st.one_of(st.sampled_from([GSO_TCPV4, GSO_TCPV6, GSO_TCPV4 | GSO_ECN, GSO_TCPV6 | GSO_ECN]),
                               st.integers(0, 255)),
            gso_size=st.one_of(st.integers(0, 64), st.integers(0, 0xFFFF)),
            csum_start=st.integers(0, 0xFFFF), csum_offset=st.integers(0, 0xFFFF), hdr_len=st.integers(0, 0xFFFF),
            max_segs=st.one_of(st.integers(0, 200), st.just(MAX_SEGS)),
            outlen=st.one_of(st.integers(0, 200), st.integers(0, 20000), st.just(OUTLEN)))


L2_PREFIXES = [b"", bytes(12) + b"\x08\x00", bytes(12) + b"\x86\xdd",
               bytes(12) + b"\x88\xa8\0\x01\x81\x00\0\x02\x86\xdd"]


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from(L2_PREFIXES), rest=st.binary(max_size=400), cut=st.integers(0, 450), **META)
def test_random_bytes_never_misbehave(prefix, rest, cut, gso_type, gso_size, csum_start, csum_offset, hdr_len,
                                      max_segs, outlen):
    data = prefix + rest
    got = segment(data, gso_type, gso_size, max_segs=max_segs, outlen=outlen, nbytes=min(cut, len(data)),
                  csum_start=csum_start, csum_offset=csum_offset, hdr_len=hdr_len)
    assert got in (BAD, TOO_BIG) or isinstance(got, list)


@settings(max_examples=300, deadline=None)
@given(v6=st.booleans(), vlans=st.sampled_from([0, 1, 2]),
       exts=st.lists(st.sampled_from(["hbh", "dst", "rt0", "rt2", "srh"]), max_size=3),
       size=st.integers(0, 3000), seed=st.integers(0, 2 ** 32),
       flips=st.lists(st.tuples(st.integers(0, 160), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 4000)), right_type=st.booleans(), **META)
def test_mutated_frames_never_misbehave(v6, vlans, exts, size, seed, flips, cut, right_type, gso_type, gso_size,
                                        csum_start, csum_offset, hdr_len, max_segs, outlen):
    # Valid frames with header bytes overwritten and the length cut: these
    # reach far deeper into the parser than random bytes do.
    if right_type:
        gso_type = (GSO_TCPV6 if v6 else GSO_TCPV4) | (gso_type & GSO_ECN)
    frame, _ = build(v6=v6, vlans=vlans, l3opts=exts if v6 else bool(seed & 1), tcpopts=bool(seed & 2),
                     payload=random.Random(seed).randbytes(size), seed=seed)
    f = bytearray(frame)
    for pos, val in flips:
        if pos < len(f):
            f[pos] = val
    nbytes = len(f) if cut is None else min(cut, len(f))
    got = segment(bytes(f), gso_type, gso_size, max_segs=max_segs, outlen=outlen, nbytes=nbytes,
                  csum_start=csum_start, csum_offset=csum_offset, hdr_len=hdr_len)
    if isinstance(got, list):
        for s in got:         # every segment keeps the frame's own headers
            assert len(s) >= 14 + 20 + 20
            assert s[:12] == bytes(f[:12])
    else:
        assert got in (BAD, TOO_BIG)
    if not flips and nbytes == len(f) and gso_type & ~GSO_ECN == (GSO_TCPV6 if v6 else GSO_TCPV4) and gso_size:
        want = expected_segments(frame, gso_size)
        if want == TOO_BIG or len(want) > max_segs or sum(map(len, want)) > outlen:
            want = TOO_BIG
        assert got == want
    elif gso_size == 0 or gso_type & ~GSO_ECN not in (GSO_TCPV4, GSO_TCPV6):
        assert got == BAD
