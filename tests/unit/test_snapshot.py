"""Snapshot encoding (sv3.shm.snapshot) and the worker's C table built from it."""
import msgpack
import pytest

from sv3._native import lib
from sv3.shm import snapshot as snap


def mac(i):
    return bytes([0x52, 0x54, 0, 0, i >> 8, i & 0xFF])


def test_round_trip_and_lookup():
    table = {mac(i): i % 7 + 1 for i in range(1, 3000)}
    gen, fdb = snap.decode(snap.encode(42, table))
    assert gen == 42
    assert dict(snap.entries(fdb)) == table
    tab, mask = snap.build_table(fdb)
    assert mask + 1 >= 2 * len(table)
    for m, port in table.items():
        assert lib.sv3_fdb_lookup(tab, mask, m) == port
    assert lib.sv3_fdb_lookup(tab, mask, mac(5000)) == -1


def test_empty_snapshot():
    gen, fdb = snap.decode(snap.encode(0, {}))
    tab, mask = snap.build_table(fdb)
    assert lib.sv3_fdb_lookup(tab, mask, mac(1)) == -1


@pytest.mark.parametrize("data", [
    b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"gen": 1}),
    msgpack.packb({"gen": "x", "fdb": b""}), msgpack.packb({"gen": 1, "fdb": b"1234567"}),
])
def test_malformed_snapshots_are_refused(data):
    with pytest.raises(ValueError):
        snap.decode(data)
