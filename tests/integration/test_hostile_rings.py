"""Hostile guest rings against a real switch: a fake front-end
(tests/fakes/frontend.py) writes broken descriptor chains into its own
guest memory and kicks.  Its port, and only its port, goes broken: one
ERROR line naming port, guest pid and reason, state "broken" in sv3.ctl,
its error eventfd written, its worker alive, its rings left alone; a
healthy pair keeps forwarding without loss.  A device reset the vhost-user
way (GET_VRING_BASE on both vrings, then a fresh start) brings it back."""
import os
import re
import time
from types import SimpleNamespace

import pytest

from sv3._native import lib
from sv3.port_worker import BROKEN_REASONS
from tests.fakes.frontend import (BROADCAST, INDIRECT, NET_HDR_LEN, NEXT, WRITE, DESC, TrafficPair,
                                  attach_port, frame, mac)

MAC_T, MAC_H = mac(0x7), mac(0x8)
RX, TX = 0, 1


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class Rig(SimpleNamespace):
    def guest(self, num=256):
        """Attach the guest under test, h (its RX buffers not posted yet)."""
        self.h, row = attach_port(self.sw, num=num)
        self.port, self.worker = row["port"], row["worker_pid"]
        self.fes.append(self.h)
        return self


@pytest.fixture
def rig(switch):
    """Healthy pair a <-> b forwarding in the background and a witness port
    t; rig.guest() adds the guest under test."""
    a, _ = attach_port(switch)
    b, _ = attach_port(switch)
    pair = TrafficPair(a, b, rate=2000).start()
    t, row_t = attach_port(switch)
    t.post_rx()
    r = Rig(sw=switch, pair=pair, a=a, b=b, t=t, t_port=row_t["port"], fes=[a, b, t])
    yield r
    pair.stop(drain_timeout=0)
    for fe in r.fes:
        fe.close()


def row(r, port=None):
    return next(p for p in r.sw.ports() if p["port"] == (port or r.port))


def wait_state(r, want, timeout=10):
    return r.sw.wait_ports(lambda ps: any(p["port"] == r.port and p["state"] == want for p in ps),
                           timeout, "port %d %s" % (r.port, want))


def error_lines(r):
    mine = re.compile(r"\bport %d\b" % r.port)
    return [line for line in r.sw.log().splitlines() if " ERROR " in line and mine.search(line)]


def put_frame(vr, i, dst=BROADCAST, size=80):
    """A sane frame in descriptor i's own buffer; returns its byte count."""
    data = bytes(NET_HDR_LEN) + frame(dst, MAC_H, b"hostile", size)
    vr.mem.write(vr.bufs[i], data)
    return len(data)


def table(vr, entries, at=None):
    """An indirect table of (addr, len, flags, next) in guest memory."""
    gpa = at if at is not None else vr.mem.alloc(16 * max(len(entries), 1), 16)
    for k, e in enumerate(entries):
        vr.mem.write(gpa + 16 * k, DESC.pack(*e))
    return gpa


# Each case writes into the guest's vring (TX unless it says RX) and posts.
def loop(vr):
    n = put_frame(vr, 0)
    vr.set_desc(0, vr.bufs[0], n, NEXT, 1)
    vr.set_desc(1, vr.bufs[1], n, NEXT, 0)
    vr.post(0)


def longer_than_ring(vr):
    put_frame(vr, 0)
    for i in range(vr.num):                     # every descriptor, then back to 0
        vr.set_desc(i, vr.bufs[i], 16, NEXT, (i + 1) % vr.num)
    vr.post(0)


def length_4g(vr):
    put_frame(vr, 0)
    vr.set_desc(0, vr.bufs[0], 0xFFFFFFFF)
    vr.post(0)


def straddles_memory_end(vr):
    vr.set_desc(0, vr.mem.end - 20, 100)
    vr.post(0)


def below_memory(vr):
    vr.set_desc(0, 0x1000, 100)
    vr.post(0)


def qva_as_gpa(vr):
    n = put_frame(vr, 0)
    vr.set_desc(0, vr.mem.qva(vr.bufs[0]), n)
    vr.post(0)


def indirect_of(size, **kw):
    def case(vr):
        n = put_frame(vr, 0)
        t = table(vr, [(vr.bufs[0], n, 0, 0)] * 2, **kw)
        vr.set_desc(0, t, size(vr), INDIRECT)
        vr.post(0)
    return case


def indirect_straddles_memory_end(vr):
    vr.set_desc(0, vr.mem.end - 16, 32, INDIRECT)
    vr.post(0)


def avail_idx_jump(vr):
    put_frame(vr, 0)
    vr.set_desc(0, vr.bufs[0], 80)
    vr.set_avail_idx(vr.avail_idx + vr.num + 1)


def head_out_of_range(vr):
    vr.post(vr.num)


def next_out_of_range(vr):
    n = put_frame(vr, 0)
    vr.set_desc(0, vr.bufs[0], n, NEXT, vr.num)
    vr.post(0)


def writable_in_tx(vr):
    n = put_frame(vr, 0)
    vr.set_desc(0, vr.bufs[0], n, WRITE)
    vr.post(0)


def rx_zero_length(vr):
    vr.set_desc(0, vr.bufs[0], 0, WRITE)
    vr.post(0)


def rx_readable(vr):
    vr.set_desc(0, vr.bufs[0], 2048, 0)
    vr.post(0)


def rx_outside(vr):
    vr.set_desc(0, vr.mem.end + 4096, 2048, WRITE)
    vr.post(0)


def rx_loop(vr):
    vr.set_desc(0, vr.bufs[0], 6, WRITE | NEXT, 1)
    vr.set_desc(1, vr.bufs[1], 6, WRITE | NEXT, 0)
    vr.post(0)


CASES = {
    "descriptor_loop": (TX, lib.SV3_BROKEN_LOOP, loop),
    "chain_longer_than_ring": (TX, lib.SV3_BROKEN_LOOP, longer_than_ring),
    "length_4g": (TX, lib.SV3_BROKEN_ADDR, length_4g),
    "straddles_memory_end": (TX, lib.SV3_BROKEN_ADDR, straddles_memory_end),
    "below_every_region": (TX, lib.SV3_BROKEN_ADDR, below_memory),
    "qva_used_as_gpa": (TX, lib.SV3_BROKEN_ADDR, qva_as_gpa),
    "indirect_len_24": (TX, lib.SV3_BROKEN_INDIRECT, indirect_of(lambda vr: 24)),
    "indirect_len_0": (TX, lib.SV3_BROKEN_INDIRECT, indirect_of(lambda vr: 0)),
    "indirect_larger_than_ring": (TX, lib.SV3_BROKEN_INDIRECT, indirect_of(lambda vr: 16 * (vr.num + 1))),
    "indirect_straddles_memory_end": (TX, lib.SV3_BROKEN_INDIRECT, indirect_straddles_memory_end),
    "avail_idx_jumps_past_ring": (TX, lib.SV3_BROKEN_AVAIL_IDX, avail_idx_jump),
    "head_out_of_range": (TX, lib.SV3_BROKEN_HEAD, head_out_of_range),
    "next_out_of_range": (TX, lib.SV3_BROKEN_NEXT, next_out_of_range),
    "writable_descriptor_in_tx": (TX, lib.SV3_BROKEN_DIRECTION, writable_in_tx),
    "rx_zero_length": (RX, lib.SV3_BROKEN_EMPTY_RX, rx_zero_length),
    "rx_readable_descriptor": (RX, lib.SV3_BROKEN_DIRECTION, rx_readable),
    "rx_outside_memory": (RX, lib.SV3_BROKEN_ADDR, rx_outside),
    "rx_loop": (RX, lib.SV3_BROKEN_LOOP, rx_loop),
    "rx_loop_in_1024_ring": (RX, lib.SV3_BROKEN_LOOP, rx_loop, 1024),
}


def recv_from(fe, src, count, timeout=5.0):
    """The next count frames fe receives from MAC src (others are skipped)."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [f for f in fe.recv_frames(count - len(got), 0.1) if f[6:12] == src]
    return got


def exchange_with_witness(r, frames=4):
    """h and t swap frames both ways; both sides get exactly what was sent."""
    r.h.post_rx()
    to_t = [frame(MAC_T, MAC_H, b"h->t %d" % k, 60 + 100 * k) for k in range(frames)]
    r.h.send_frames(to_t)
    assert recv_from(r.t, MAC_H, frames) == to_t
    to_h = [frame(MAC_H, MAC_T, b"t->h %d" % k, 60 + 100 * k) for k in range(frames)]
    r.t.send_frames(to_h)
    assert recv_from(r.h, MAC_T, frames) == to_h


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_ring_breaks_only_its_own_port(rig, case):
    vring, reason, write, *num = CASES[case]
    r = rig.guest(*num)
    write(r.h.vrings[vring])
    if vring == TX:
        r.h.kick_vring(TX)
    else:
        r.t.send_frames([frame(BROADCAST, MAC_T, b"wake h")])   # h's RX ring is read when a frame comes
    wait_state(r, "broken")
    time.sleep(0.5)                                 # a second report would show by now

    lines = error_lines(r)
    text = BROKEN_REASONS[reason]
    assert len(lines) == 1, "want one ERROR line for port %d, got:\n%s" % (r.port, "\n".join(lines))
    assert "guest pid %d" % os.getpid() in lines[0] and "broken" in lines[0] and text in lines[0], lines[0]
    assert r.h.errors(vring) >= 1, "the vring's error eventfd was not written"
    p = row(r)
    assert p["worker_pid"] == r.worker and pid_alive(r.worker)
    r.pair.wait_progress(200)                       # the healthy pair keeps forwarding

    # A broken port leaves the rings alone, even sane chains posted later.
    used = (r.h.tx.used_idx, r.h.rx.used_idx)
    r.h.send_frames([frame(MAC_T, MAC_H, b"ignored")])
    r.t.send_frames([frame(BROADCAST, MAC_T, b"dropped")])
    time.sleep(0.3)
    assert (r.h.tx.used_idx, r.h.rx.used_idx) == used
    assert row(r)["state"] == "broken"

    # Device reset, the vhost-user way: the port forwards again, no new ERROR.
    r.h.restart()
    wait_state(r, "active")
    exchange_with_witness(r)
    assert error_lines(r) == lines
    assert row(r)["worker_pid"] == r.worker

    stats = r.pair.stop()
    assert stats["error"] is None and stats["lost"] == [0, 0], stats
    assert stats["duplicates"] == [0, 0] and stats["damaged"] == [0, 0], stats
    for fe_port in (p for p in r.sw.ports() if p["port"] not in (r.port, r.t_port)):
        assert fe_port["state"] == "active" and fe_port["drops"] == 0, fe_port


def test_zero_length_tx_descriptor_is_a_runt_not_a_break(rig):
    """Reference section 12: skip zero-length descriptors; a chain with no
    bytes is a runt, dropped and counted, and the port stays active."""
    r = rig.guest()
    r.h.tx.set_desc(0, r.h.tx.bufs[0], 0)
    r.h.tx.post(0)
    r.h.kick_vring(TX)
    r.sw.wait_ports(lambda ps: any(p["port"] == r.port and p["drop_detail"].get("drop_runt") == 1 for p in ps),
                    10, "a runt drop")
    assert r.h.tx.used() == [(0, 0)]
    assert row(r)["state"] == "active" and error_lines(r) == []
    exchange_with_witness(r)


def test_buffer_across_adjacent_regions_is_forwarded_intact(rig):
    """Regions 0 and 1 are adjacent in GPA space but not in the memfd nor
    in QVA space: a buffer that crosses the boundary is legal and must be
    read from both mappings."""
    r = rig.guest()
    mem, vr = r.h.mem, r.h.tx
    data = bytes(NET_HDR_LEN) + frame(MAC_T, MAC_H, bytes(range(256)) * 2, 600)
    gpa = mem.boundary() - 100
    mem.write(gpa, data)
    i = vr.free.popleft()
    vr.set_desc(i, gpa, len(data))
    vr.post(i)
    r.h.kick_vring(TX)
    assert recv_from(r.t, MAC_H, 1) == [data[NET_HDR_LEN:]]
    assert row(r)["state"] == "active" and error_lines(r) == []
