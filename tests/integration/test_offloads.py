"""Offload metadata across the switch (virtio 1.1 5.1.6): test front-ends
(tests/fakes/frontend.py) negotiate different offloads, one sends TSO and
partial-checksum frames, and each receiver gets what it negotiated: the
metadata as it was, or frames sv3 segmented / completed, checked against
scapy.  Then fuzzed headers: dropped and counted, the worker lives."""
import random
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.fakes.frontend import NET_HDR_LEN, attach_port, frame
from tests.helpers.packets import (A, B, C, D, GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, PLAIN, SENDER,
                                   TSO_RECEIVER, UNKNOWN, check_segments, net_hdr, parse_hdr,
                                   partial, tso_frame)

@pytest.fixture
def four(switch):
    """A sends offloads; B and D take none; C takes them all."""
    ports = {}
    for name, m, feats in (("a", A, SENDER), ("b", B, PLAIN), ("c", C, TSO_RECEIVER), ("d", D, PLAIN)):
        fe, _ = attach_port(switch, features=feats)
        fe.post_rx()
        ports[name] = fe
    for fe, m in ((ports["a"], A), (ports["b"], B), (ports["c"], C), (ports["d"], D)):
        fe.send_frames([frame(b"\xff" * 6, m)])     # every MAC learned
    switch.wait_ports(lambda ps: sum(len(p["macs"]) for p in ps) == 4, 10, "4 MACs learned")
    time.sleep(0.2)
    for fe in ports.values():
        fe.poll_frames()                             # the broadcasts
        fe.reclaim_tx()
    yield ports
    for fe in ports.values():
        fe.close()


def send_raw(fe, data, hdr):
    fe.tx.add_tx(data, hdr=hdr)
    fe.kick_vring(1)


def row_of(switch, m):
    return [p for p in switch.ports() if p["macs"] and p["macs"][0] == ":".join("%02x" % b for b in m)][0]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tso_flood_reaches_each_receiver_as_it_negotiated(switch, four, v6):
    raw, hdr, payload = tso_frame(UNKNOWN, v6)
    send_raw(four["a"], raw, hdr)
    whole = four["c"].recv_frames(1, 5, with_header=True)
    assert len(whole) == 1 and whole[0][NET_HDR_LEN:] == raw
    h = parse_hdr(whole[0])
    assert h["gso_type"] == (GSO_TCPV6 if v6 else GSO_TCPV4) and h["gso_size"] == 1400
    assert h["flags"] == NEEDS_CSUM and h["csum_offset"] == 16
    for rx in ("b", "d"):
        check_segments(four[rx].recv_frames(15, 5), payload, 1400, v6)
    a = row_of(switch, A)
    assert a["sw_segmented"] == 1, a                # once for B and D together
    assert a["drops"] == 0, a
    table = subprocess.run([sys.executable, "-m", "sv3.ctl", "--socket", switch.socket, "ports"],
                           capture_output=True, text=True, timeout=10).stdout
    line = [ln for ln in table.splitlines() if ln.split()[0] == str(a["port"])][0]
    assert "OFFLOADED/SEGMENTED/CHECKSUMMED" in table and line.endswith(" 1/1/0"), table


def test_partial_checksum_is_completed_only_for_who_needs_it(switch, four):
    pkt = Ether(dst=B, src=A) / IP(src="10.55.0.1", dst="10.55.0.2") / TCP(flags="S") / (b"x" * 301)
    raw, l4 = partial(pkt, pkt[1])
    send_raw(four["a"], raw, net_hdr(NEEDS_CSUM, 0, 0, 0, l4, 16))
    [got] = four["b"].recv_frames(1, 5)
    assert got == bytes(pkt), "checksum not completed"
    pkt.dst = C
    raw, l4 = partial(pkt, pkt[1])
    send_raw(four["a"], raw, net_hdr(NEEDS_CSUM, 0, 0, 0, l4, 16))
    [got] = four["c"].recv_frames(1, 5, with_header=True)
    assert got[NET_HDR_LEN:] == raw and parse_hdr(got)["flags"] == NEEDS_CSUM
    assert row_of(switch, A)["sw_checksummed"] == 1


def test_offloads_the_port_did_not_negotiate_are_dropped(switch, four):
    """B negotiated no CSUM/HOST_TSO: its offload headers are refused."""
    raw, hdr, _ = tso_frame(A)
    send_raw(four["b"], raw, hdr)
    send_raw(four["b"], raw[:200], net_hdr(NEEDS_CSUM, 0, 0, 0, 34, 16))
    four["b"].send_frames([frame(A, B, b"after")])
    got = four["a"].recv_frames(1, 5)
    assert got == [frame(A, B, b"after")]
    assert row_of(switch, B)["drop_detail"].get("drop_bad_header") == 2


def invalid(h, flen):
    """Headers sv3 must refuse whatever the frame holds (sv3_offload_check)."""
    flags, gso, gso_size, start, off = h["flags"] & NEEDS_CSUM, h["gso_type"], h["gso_size"], \
        h["csum_start"], h["csum_offset"]
    if flags and start + off + 2 > flen:
        return True
    return gso != 0 and (gso & 0x7F not in (GSO_TCPV4, GSO_TCPV6) or not flags or gso_size == 0)


def test_fuzzed_headers_are_dropped_and_counted_and_the_worker_lives(switch, four):
    rng = random.Random(4)
    must_drop, got = 0, []
    for i in range(400):
        body = bytes(rng.getrandbits(8) for _ in range(rng.choice((14, 60, 200, 1500, 3000))))
        f = B + A + body[12:] if rng.random() < 0.8 else body
        h = dict(flags=rng.choice((0, 1, 2, 3, 0xFF)), gso_type=rng.choice((0, 1, 3, 4, 5, 0x81, 0xFF)),
                 hdr_len=rng.getrandbits(16), gso_size=rng.choice((0, 1, 536, 1400, 0xFFFF)),
                 csum_start=rng.choice((0, 14, 34, 54, len(f) - 2, len(f), 0xFFFF)),
                 csum_offset=rng.choice((6, 16, 0xFFFF)))
        must_drop += invalid(h, len(f)) and len(f) >= 14
        send_raw(four["a"], f, net_hdr(**h))
        if i % 50 == 49:
            four["a"].reclaim_tx()
            got += four["b"].poll_frames()
    four["a"].send_frames([frame(B, A, b"still here")])
    got += four["b"].recv_frames(400, 3)
    assert frame(B, A, b"still here") in got
    a = row_of(switch, A)
    assert a["state"] == "active" and a["drop_detail"].get("drop_bad_header", 0) >= must_drop, a
    assert must_drop > 100
    print("fuzz: %d of 400 headers invalid by rule, %d dropped as bad headers, %d frames to B"
          % (must_drop, a["drop_detail"].get("drop_bad_header", 0), len(got)))



def test_legacy_header_sender(switch, four):
    """A legacy driver (no VERSION_1, no MRG_RXBUF) uses the 10-byte header
    (virtio 1.1 5.1.6): its TSO frames are parsed from it alike."""
    from tests.fakes.frontend import F_INDIRECT_DESC, F_PROTOCOL_FEATURES
    from tests.helpers.packets import CSUM, HOST_TSO4
    legacy = sum(1 << b for b in (F_INDIRECT_DESC, F_PROTOCOL_FEATURES, CSUM, HOST_TSO4))
    fe, _ = attach_port(switch, features=legacy)
    try:
        raw, hdr, payload = tso_frame(B)
        fe.tx.add_tx(raw, hdr=hdr[:10])
        fe.kick_vring(1)
        check_segments(four["b"].recv_frames(15, 5), payload, 1400, False)
        assert "header 10 bytes" in switch.log()
    finally:
        fe.close()
