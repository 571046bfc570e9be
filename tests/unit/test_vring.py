"""The C core's per-frame path (sv3/_native/port.c, vring.c) against a fake
guest (tests/helpers/vring_driver.py): guest TX -> ring -> guest RX, the
virtio-net header and mergeable buffers, 16-bit index wrap, hostile rings,
RX starvation, oversize chains and notification suppression."""
import os
import struct
from types import SimpleNamespace

import pytest

from sv3._native import lib
from sv3.shm import snapshot
from tests.helpers.vring_driver import (INDIRECT, NEXT, NO_INTERRUPT, NO_NOTIFY, WRITE,
                                        Driver, GuestMemory, connect, make_port)

MAC_A = bytes.fromhex("525400550001")
MAC_B = bytes.fromhex("525400550002")
HDR = 12


def frame(n, seed=0, dst=MAC_B, src=MAC_A):
    return dst + src + b"\x08\x00" + bytes((i * 7 + seed) & 0xff for i in range(n - 14))


def pair(num=256, start_idx=0, a_opts=None, b_opts=None, b_rx_num=None):
    """Ports A and B connected, each with its own guest memory and both vrings."""
    a = make_port(1, **(a_opts or {}))
    b = make_port(2, **(b_opts or {}))
    connect(a, b)
    ma, mb = GuestMemory(), GuestMemory(gpa_base=0x80000000)
    ma.install(a)
    mb.install(b)
    s = SimpleNamespace(a=a, b=b, ma=ma, mb=mb)
    s.arx = Driver(ma, a, 0, num, start_idx=start_idx)
    s.atx = Driver(ma, a, 1, num, start_idx=start_idx)
    s.brx = Driver(mb, b, 0, b_rx_num or num, start_idx=start_idx)
    s.btx = Driver(mb, b, 1, num, start_idx=start_idx)
    return s


def xfer(s, breaths=4):
    return s.a.run(breaths), s.b.run(breaths)


def recv(drv):
    """Frames in the new used entries: [(header, frame bytes, entries)]."""
    entries, out = drv.used(), []
    while entries:
        first = drv.read_rx(entries[0])
        nbuf = struct.unpack_from("<H", first, 10)[0]
        assert 1 <= nbuf <= len(entries)
        mine, entries = entries[:nbuf], entries[nbuf:]
        data = b"".join(drv.read_rx(e) for e in mine)
        out.append((data[:HDR], data[HDR:], mine))
    return out


# -- frames that should pass --------------------------------------------------

def test_frame_arrives_intact_with_header_and_counters():
    s = pair()
    s.brx.add_rx([2048] * 4)
    frames = [frame(60, 1), frame(1514, 2)]
    heads = [s.atx.add_tx(f) for f in frames]
    assert xfer(s) == (2, 2)
    assert s.atx.used() == [(h, 0) for h in heads]          # TX chains returned, len 0
    got = recv(s.brx)
    assert [g[1] for g in got] == frames
    for hdr, f, entries in got:
        assert hdr == bytes(10) + b"\x01\x00"                # num_buffers = 1, rest 0
        assert [e[1] for e in entries] == [HDR + len(f)]
    assert (s.a.ctr.rx_frames, s.a.ctr.rx_bytes) == (2, 60 + 1514)
    assert (s.b.ctr.tx_frames, s.b.ctr.tx_bytes) == (2, 60 + 1514)
    assert s.a.p.broken == s.b.p.broken == 0


def test_mergeable_frame_spans_full_buffers():
    s = pair()
    s.brx.add_rx([1500] * 8)
    f = frame(4000, 3)
    s.atx.add_tx(f)
    xfer(s)
    [(hdr, data, entries)] = recv(s.brx)
    assert data == f
    assert struct.unpack_from("<H", hdr, 10)[0] == 3 == len(entries)
    assert [e[1] for e in entries] == [1500, 1500, HDR + 4000 - 3000]


def test_without_mrg_rxbuf_a_frame_needs_one_chain():
    s = pair(b_opts={"mrg": False})
    s.brx.add_rx([1500] * 4)
    s.atx.add_tx(frame(4000))
    xfer(s)
    assert s.brx.used() == []
    assert s.b.ctr.drop_no_buffer == 1 and s.b.p.broken == 0
    s.atx.add_tx(frame(200, 4))                   # the buffers are still there
    xfer(s)
    [(hdr, data, _)] = recv(s.brx)
    assert data == frame(200, 4) and hdr[10:12] == b"\x01\x00"
    s.brx.add_rx([[HDR, 2000, 2000]])              # one chain, three descriptors
    for _ in range(3):
        s.atx.add_tx(frame(1400, 5))               # use up the 1500-byte chains
    s.atx.add_tx(frame(4000, 6))
    xfer(s)
    got = recv(s.brx)
    assert [g[1] for g in got] == [frame(1400, 5)] * 3 + [frame(4000, 6)]


@pytest.mark.parametrize("split", [[HDR], [HDR, 7, 100], [5, 20], [1] * 30])
def test_header_and_data_split_over_descriptors(split):
    s = pair()
    s.brx.add_rx([[HDR, 40, 600], 1500])          # RX split too
    f = frame(300, 7)
    s.atx.add_tx(f, split=split)
    s.atx.add_tx(f, split=split)
    xfer(s)
    assert [g[1] for g in recv(s.brx)] == [f, f]


def test_rx_header_split_over_descriptors():
    s = pair()                                     # any layout (virtio 1.1 2.6.4.1), mrg or not
    s.brx.add_rx([[5, 7, 600], [2, 1500]])
    f = frame(300, 7)
    s.atx.add_tx(f)
    s.atx.add_tx(f)
    xfer(s)
    assert [g[1] for g in recv(s.brx)] == [f, f]
    assert s.b.ctr.drop_no_buffer == 0


def test_indirect_descriptors_when_negotiated():
    s = pair(a_opts={"indirect": True}, b_opts={"indirect": True})
    s.brx.add_rx([[HDR, 1000, 1000]], indirect=True)
    f = frame(1800, 8)
    s.atx.add_tx(f, split=[HDR, 50], indirect=True)
    xfer(s)
    [(_, data, entries)] = recv(s.brx)
    assert data == f and entries[0][1] == HDR + 1800
    assert s.a.p.broken == s.b.p.broken == 0


def test_indirect_refused_when_not_negotiated():
    s = pair()
    s.brx.add_rx([1500])
    s.atx.add_tx(frame(100), indirect=True)
    assert xfer(s) == (0, 0)
    assert (s.a.p.broken, s.a.p.broken_vring) == (lib.SV3_BROKEN_INDIRECT, 1)
    assert s.atx.used_idx == 0 and s.brx.used() == []


def test_16_bit_index_wrap_both_ways():
    s = pair(num=4, start_idx=65534)
    sent = 0
    for rnd in range(3):                           # 9 frames each way, 65534 -> 7
        s.arx.add_rx([1500] * 3)
        s.brx.add_rx([1500] * 3)
        fa = [frame(100 + 10 * k, rnd * 3 + k) for k in range(3)]
        fb = [frame(100 + 10 * k, 50 + rnd * 3 + k, dst=MAC_A, src=MAC_B) for k in range(3)]
        for fx, fy in zip(fa, fb):
            s.atx.add_tx(fx)
            s.btx.add_tx(fy)
        xfer(s)
        s.a.run(4)
        assert [g[1] for g in recv(s.brx)] == fa
        assert [g[1] for g in recv(s.arx)] == fb
        assert len(s.atx.used()) == len(s.btx.used()) == 3
        sent += 3
    for drv in (s.arx, s.atx, s.brx, s.btx):
        assert drv.used_idx == (65534 + sent) & 0xffff == 7
        assert drv.vr.last_avail_idx == 7
    assert s.a.ctr.tx_frames == s.b.ctr.tx_frames == 9
    assert s.a.p.broken == s.b.p.broken == 0


# -- hostile guest TX ---------------------------------------------------------

def _bad_indirect(length, flags, table_entries=None):
    def post(d, m, buf):
        t = m.alloc(64)
        for k, (addr, n, fl, nxt) in enumerate(table_entries or [(None, HDR + 60, 0, 0)]):
            m.write(t + 16 * k, struct.pack("<QIHH", buf if addr is None else addr, n, fl, nxt))
        d.add_raw([(0, t, length, flags, 1)])
    return post


HOSTILE_TX = {
    "avail_idx_jump": (lib.SV3_BROKEN_AVAIL_IDX, lambda d, m, buf: d.set_avail_idx(d.num + 1)),
    "head_out_of_range": (lib.SV3_BROKEN_HEAD, lambda d, m, buf: d.add_raw([(0, buf, 72, 0, 0)], head=d.num)),
    "next_loop": (lib.SV3_BROKEN_LOOP, lambda d, m, buf: d.add_raw([(0, buf, 40, NEXT, 1), (1, buf, 40, NEXT, 0)])),
    "self_loop": (lib.SV3_BROKEN_LOOP, lambda d, m, buf: d.add_raw([(0, buf, 40, NEXT, 0)])),
    "next_out_of_range": (lib.SV3_BROKEN_NEXT, lambda d, m, buf: d.add_raw([(0, buf, 40, NEXT, d.num)])),
    "host_address_as_gpa": (lib.SV3_BROKEN_ADDR, lambda d, m, buf: d.add_raw([(0, m.host(buf), 72, 0, 0)])),
    "qva_as_gpa": (lib.SV3_BROKEN_ADDR, lambda d, m, buf: d.add_raw([(0, m.qva_base + buf - m.gpa_base, 72, 0, 0)])),
    "below_memory": (lib.SV3_BROKEN_ADDR, lambda d, m, buf: d.add_raw([(0, m.gpa_base - 64, 72, 0, 0)])),
    "straddles_end": (lib.SV3_BROKEN_ADDR, lambda d, m, buf: d.add_raw([(0, m.end - 20, 100, 0, 0)])),
    "wraps_64_bits": (lib.SV3_BROKEN_ADDR, lambda d, m, buf: d.add_raw([(0, 2**64 - 16, 100, 0, 0)])),
    "indirect_len_not_16n": (lib.SV3_BROKEN_INDIRECT, _bad_indirect(24, INDIRECT)),
    "indirect_len_zero": (lib.SV3_BROKEN_INDIRECT, _bad_indirect(0, INDIRECT)),
    "indirect_with_next": (lib.SV3_BROKEN_INDIRECT, _bad_indirect(16, INDIRECT | NEXT)),
    "indirect_nested": (lib.SV3_BROKEN_INDIRECT, _bad_indirect(16, INDIRECT, [(None, 16, INDIRECT, 0)])),
    "indirect_next_out_of_table": (lib.SV3_BROKEN_INDIRECT, _bad_indirect(32, INDIRECT, [(None, 40, NEXT, 2), (None, 40, 0, 0)])),
    "writable_in_tx": (lib.SV3_BROKEN_DIRECTION, lambda d, m, buf: d.add_raw([(0, buf, 72, WRITE, 0)])),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TX))
def test_hostile_tx_ring_breaks_the_port(case):
    reason, post = HOSTILE_TX[case]
    s = pair(num=8, a_opts={"indirect": True})
    s.brx.add_rx([1500] * 4)
    buf = s.ma.alloc(HDR + 60)
    s.ma.write(buf, bytes(HDR) + frame(60))
    post(s.atx, s.ma, buf)
    assert xfer(s) == (0, 0)
    assert (s.a.p.broken, s.a.p.broken_vring) == (reason, 1)
    assert s.atx.used_idx == 0 and s.a.ctr.rx_frames == 0
    s.atx.set_avail_idx(s.atx.vr.last_avail_idx)   # even a sane ring is left alone now
    s.atx.add_tx(frame(80))
    assert s.a.run(8) == 0 and s.a.arm() == 0
    assert s.atx.used_idx == 0 and s.brx.used() == []
    assert s.a.p.broken == reason


def test_hostile_rx_zero_length_buffers_do_not_crash():
    s = pair(b_rx_num=1024)
    s.brx.add_rx([16] + [0] * 600)                 # in this process: it once overflowed the stack
    s.atx.add_tx(frame(1500))
    xfer(s)
    assert s.brx.used() == []                      # never a partial frame
    assert s.b.p.broken == lib.SV3_BROKEN_EMPTY_RX or s.b.ctr.drop_no_buffer == 1
    s.atx.add_tx(frame(1500))
    xfer(s)
    assert s.brx.used_idx == 0 and s.b.ctr.tx_frames == 0


def test_broken_rx_vring_is_left_alone_and_inbound_counted_as_drop_broken():
    s = pair()
    s.brx.add_raw([(s.brx.num - 1, s.mb.alloc(1500), 1500, 0, 0)])   # readable, in RX
    s.brx.add_rx([1500] * 3)
    s.atx.add_tx(frame(100))
    xfer(s)
    assert (s.b.p.broken, s.b.p.broken_vring) == (lib.SV3_BROKEN_DIRECTION, 0)
    for k in range(2):
        s.atx.add_tx(frame(100, k))
    s.a.run(4)
    assert s.b.run(8) == 3 and s.b.arm() == 0      # discarded, not delivered
    assert s.brx.used_idx == 0 and s.brx.vr.last_avail_idx == 0
    assert s.b.ctr.drop_broken == 3                # sv3.h: "dropped because the port is broken"


# -- starvation and oversize --------------------------------------------------

def test_rx_starvation_waits_without_spinning():
    s = pair()
    s.brx.add_rx([1500, 1500])
    f = frame(9000, 9)
    s.atx.add_tx(f)
    assert s.a.run(4) == 1
    breaths = s.b.ctr.breaths
    assert s.b.run(64) == 0
    assert s.b.ctr.breaths == breaths + 1          # one look, no spinning
    assert s.b.p.rx_starved == 1 and s.brx.used() == []
    assert s.b.arm() == 0                          # only new buffers can help
    assert s.brx.used_flags == 0                   # ... so kicks are wanted on RX
    assert s.b.run(64) == 0 and s.b.arm() == 0
    s.brx.add_rx([1500] * 5)
    assert s.b.arm() == 1
    lib.sv3_port_disarm(s.b.p)
    assert s.b.run(4) == 1
    [(hdr, data, entries)] = recv(s.brx)
    assert data == f and len(entries) == 7 == struct.unpack_from("<H", hdr, 10)[0]
    assert [e[1] for e in entries] == [1500] * 6 + [HDR + 9000 - 9000]
    assert s.b.p.rx_starved == 0 and s.b.ctr.drop_no_buffer == 0


def test_frame_larger_than_the_whole_rx_ring_is_dropped():
    s = pair(b_rx_num=8)
    s.brx.add_rx([1500] * 8)
    s.atx.add_tx(frame(13000))
    s.atx.add_tx(frame(1000, 10))
    xfer(s)
    assert s.b.ctr.drop_no_buffer == 1 and s.b.p.rx_starved == 0
    assert [g[1] for g in recv(s.brx)] == [frame(1000, 10)]


def test_tx_chain_over_max_segs_is_dropped_not_broken():
    s = pair(num=256)
    s.brx.add_rx([1500] * 4)
    f = frame(300, 11)
    big = s.atx.add_tx(f, split=[HDR] + [2] * lib.SV3_MAX_SEGS)        # 66 descriptors
    ok = s.atx.add_tx(f, split=[HDR] + [2] * (lib.SV3_MAX_SEGS - 2))   # exactly 64
    xfer(s)
    assert s.atx.used() == [(big, 0), (ok, 0)]
    assert s.a.ctr.drop_oversize == 1 and s.a.p.broken == 0
    assert [g[1] for g in recv(s.brx)] == [f]
    assert len(s.atx.free) == 256                  # every descriptor came back


# -- notifications ------------------------------------------------------------

def _signalled(fd):
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.fixture
def callfd():
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


def test_interrupt_unless_no_interrupt_flag(callfd):
    s = pair()
    s.b.p.vr[0].call_fd = callfd
    s.brx.add_rx([1500] * 8)
    s.atx.add_tx(frame(100))
    xfer(s)
    assert _signalled(callfd) == 1
    s.brx.avail_flags = NO_INTERRUPT
    s.atx.add_tx(frame(100))
    xfer(s)
    assert len(recv(s.brx)) == 2 and _signalled(callfd) == 0
    s.brx.avail_flags = 0
    s.atx.add_tx(frame(100))
    xfer(s)
    assert _signalled(callfd) == 1
    assert xfer(s) == (0, 0) and _signalled(callfd) == 0   # nothing new, no interrupt


def test_interrupt_with_event_idx_follows_used_event(callfd):
    s = pair(b_opts={"event_idx": True})
    s.b.p.vr[0].call_fd = callfd
    s.brx.add_rx([1500] * 8)
    s.brx.avail_flags = NO_INTERRUPT               # ignored with EVENT_IDX
    got = []
    for used_event in (0, 3, 3, 3, 3):
        s.brx.used_event = used_event
        s.atx.add_tx(frame(100))
        xfer(s)
        got.append(_signalled(callfd))
    assert got == [1, 0, 0, 1, 0]                  # used idx 1, 2, 3, 4 (passes 3), 5


def test_kick_suppression_follows_arm():
    s = pair(b_opts={"event_idx": True})
    assert s.atx.used_flags == NO_NOTIFY           # polling: no kicks wanted
    assert s.a.arm() == 0
    assert s.atx.used_flags == 0
    lib.sv3_port_disarm(s.a.p)
    assert s.atx.used_flags == NO_NOTIFY
    s.btx.add_tx(frame(100, dst=MAC_A))
    s.b.run(4)
    assert s.b.arm() == 0 and s.btx.avail_event == 1 and s.btx.used_flags == 0
    s.btx.add_tx(frame(100, dst=MAC_A))
    assert s.b.arm() == 1                          # a chain that raced the arming


# -- a full ring: backpressure, then drops once the receiver looks stuck ------

def _knows_b(s):
    """A's MAC table sends MAC_B to port 2 (unicast, not flood)."""
    tab, mask = snapshot.build_table(struct.pack("<6sH", MAC_B, 2))
    s.a.p.fdb, s.a.p.fdb_mask, s.a.tab = tab, mask, tab


def test_full_ring_holds_the_sender_then_drops_after_the_stall_time():
    s = pair()
    _knows_b(s)
    frames = [frame(1500, k) for k in range(200)]   # 1536-byte records: ~170 fill 256 KiB
    for f in frames:
        s.atx.add_tx(f)
    s.a.run(64)
    taken = s.atx.used()
    ring = s.a.p.out[0]
    assert 150 < len(taken) < 200, len(taken)       # the rest waits in A's TX vring
    assert ring.ring.drops == 0 and s.a.ctr.rx_frames == len(taken)
    assert ring.full_since != 0 and ring.stalled == 0
    # The receiver takes frames again: what waited goes through, in order.
    s.brx.add_rx([2048] * 256)
    for _ in range(8):
        xfer(s, 64)
    got = [data for _, data, _ in recv(s.brx)]
    assert got == frames and ring.ring.drops == 0 and ring.full_since == 0
    # A receiver that takes nothing for SV3_STALL_NS: the sender stops waiting.
    s.atx.used()
    more = [frame(1500, k) for k in range(200, 400)]
    for f in more:
        s.atx.add_tx(f)
    s.a.run(64)
    waiting = 200 - len(s.atx.used())
    assert waiting > 0 and ring.ring.drops == 0
    ring.full_since -= lib.SV3_STALL_NS               # as if 10 ms had passed
    s.a.run(64)
    assert len(s.atx.used()) == waiting and ring.ring.drops == waiting
    assert ring.stalled == 1
