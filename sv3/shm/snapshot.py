"""MAC table snapshots: the master's table, numbered, as msgpack.

A snapshot is {"gen": N, "fdb": bytes}: fdb holds 8-byte records, the 6
MAC bytes then the owning port id as little-endian u16.  Workers load a
snapshot into their private C hash (load_into) between breaths; a newer
generation replaces the older one whole, never merged."""
import struct

import msgpack

from .._native import ffi, lib

_REC = struct.Struct("<6sH")


def encode(gen, table):
    """table: {mac bytes(6): port_id}."""
    fdb = b"".join(_REC.pack(mac, port) for mac, port in table.items())
    return msgpack.packb({"gen": gen, "fdb": fdb}, use_bin_type=True)


def decode(data):
    """-> (gen, fdb bytes); raises ValueError on anything malformed."""
    try:
        obj = msgpack.unpackb(data, raw=False)
        gen, fdb = obj["gen"], obj["fdb"]
    except Exception as e:
        raise ValueError("bad snapshot: %s" % e)
    if not isinstance(gen, int) or not isinstance(fdb, bytes) or len(fdb) % _REC.size:
        raise ValueError("bad snapshot fields")
    return gen, fdb


def entries(fdb):
    """Iterate (mac bytes, port_id) of a decoded fdb field."""
    return _REC.iter_unpack(fdb)


def build_table(fdb):
    """A C hash table for fdb -> (cdata array, mask).  Keep the array alive
    for as long as struct sv3_port.fdb points to it."""
    n = len(fdb) // _REC.size
    slots = 256
    while slots < 2 * n:
        slots *= 2
    tab = ffi.new("struct sv3_fdb_entry[]", slots)
    lib.sv3_fdb_load(tab, slots - 1, fdb, n)
    return tab, slots - 1
