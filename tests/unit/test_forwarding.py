"""The forwarding decision of the C core (sv3_forward_decision): unicast to
the owning port, flood unknown/multicast/broadcast, drop hairpins, learn
unicast sources once."""
import pytest

from sv3._native import ffi, lib
from sv3.shm import snapshot as snap

SELF, B, C = 1, 2, 3
MAC_A = bytes.fromhex("525400550001")
MAC_B = bytes.fromhex("525400550002")
MAC_C = bytes.fromhex("525400550003")
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")

FLOOD, DROP = -1, -2


@pytest.fixture
def port():
    p = ffi.new("struct sv3_port *")
    ctr = ffi.new("struct sv3_counters *")
    p.port_id, p.ctr = SELF, ctr
    p.npeers = 2
    p.out[0].port_id, p.out[1].port_id = B, C
    keep = [ctr]

    def load(table):
        tab, mask = snap.build_table(snap.decode(snap.encode(1, table))[1])
        keep.append(tab)
        p.fdb, p.fdb_mask, p.last_src = tab, mask, 0
    p_load = load
    return p, p_load


def frame(dst, src):
    return dst + src + b"\x08\x00" + bytes(46)


def decide(p, data):
    return lib.sv3_forward_decision(p, data, len(data), ffi.NULL)


def learned(p):
    macs = [p.learn[i].to_bytes(8, "little")[:6] for i in range(p.nlearn)]
    p.nlearn = 0
    return macs


def test_unknown_unicast_floods_until_a_snapshot_knows_it(port):
    p, load = port
    assert decide(p, frame(MAC_B, MAC_A)) == FLOOD
    load({MAC_B: B, MAC_C: C})
    assert decide(p, frame(MAC_B, MAC_A)) == 0
    assert decide(p, frame(MAC_C, MAC_A)) == 1


def test_broadcast_and_multicast_flood(port):
    p, load = port
    load({MAC_B: B})
    assert decide(p, frame(BCAST, MAC_A)) == FLOOD
    assert decide(p, frame(MCAST, MAC_A)) == FLOOD


def test_hairpin_is_dropped_and_counted(port):
    p, load = port
    load({MAC_A: SELF, MAC_B: B})
    assert decide(p, frame(MAC_A, MAC_B)) == DROP
    assert p.ctr.drop_hairpin == 1


def test_runt_is_dropped(port):
    p, _ = port
    assert lib.sv3_forward_decision(p, b"\x00" * 13, 13, ffi.NULL) == DROP


def test_snapshot_ahead_of_peer_list_floods(port):
    p, load = port
    load({MAC_B: 9})                          # port 9 not (yet) a peer here
    assert decide(p, frame(MAC_B, MAC_A)) == FLOOD


def test_learns_unicast_source_once_not_multicast(port):
    p, load = port
    for _ in range(5):
        decide(p, frame(BCAST, MAC_A))
    assert learned(p) == [MAC_A]
    decide(p, frame(BCAST, MCAST))             # multicast source: never learned
    assert learned(p) == []


def test_moved_mac_is_reported(port):
    p, load = port
    load({MAC_A: B})                           # the table says A lives on B
    decide(p, frame(BCAST, MAC_A))
    assert learned(p) == [MAC_A]


def test_known_source_refreshed_once_per_hit_period(port):
    p, load = port
    load({MAC_A: SELF})
    decide(p, frame(BCAST, MAC_A))
    decide(p, frame(MAC_B, MAC_A))
    assert learned(p) == [MAC_A]              # one refresh...
    decide(p, frame(BCAST, MAC_C)); decide(p, frame(BCAST, MAC_A))
    assert learned(p) == [MAC_C]              # ...not again until hits are cleared
    lib.sv3_fdb_clear_hits(p)
    decide(p, frame(BCAST, MAC_A))
    assert learned(p) == [MAC_A]
