"""SPSC rings in POSIX shared memory: one per ordered pair of ports.

Layout of one segment (struct sv3_ring in sv3/_native/sv3.h, 192 bytes,
then `size` data bytes, size a power of two):

    line 0  tail, frames, drops     written by the producer only
    line 1  head, waiting, accepts  written by the consumer only (accepts:
            the SV3_ACCEPT_* offloads it takes as they are)
    line 2  magic, version, size    written by the master at creation
    data    records: struct sv3_frame (16 B: len, virtio-net header
            fields) + frame bytes, each record 16-byte aligned

Cursors are free-running byte counts (u64); a position is cursor & (size-1).
A record never wraps: a pad record (len 0xffffffff) fills the rest of the
area instead.  Ordering: the producer writes records, then store-releases
tail; the consumer load-acquires tail, reads, then store-releases head.
Sleeping: the consumer sets waiting=1, full fence, re-checks tail; the
producer publishes tail, full fence, and if waiting is set clears it and
writes the consumer's doorbell eventfd (lazy doorbell: only a sleeping
consumer costs a syscall).

Lifecycle: the master creates both rings of a pair when a port attaches,
tells both workers (peer_add) and unlinks the segments when either port
goes away (peer_del first).  Offsets only, never pointers, live in shm:
each process maps the segment at its own address.
"""
from .._native import lib
from .segment import Segment

HEADER_BYTES = 192
DEFAULT_DATA_BYTES = 1024 * 1024


def create(name, data_bytes=DEFAULT_DATA_BYTES):
    if data_bytes & (data_bytes - 1) or data_bytes < 4096:
        raise ValueError("ring size must be a power of two >= 4096")
    seg = Segment(name, HEADER_BYTES + data_bytes, create=True)
    lib.sv3_ring_init(seg.cast("struct sv3_ring *"), data_bytes)
    return seg


def attach(name):
    seg = Segment(name)
    r = seg.cast("struct sv3_ring *")
    if r.magic != lib.SV3_RING_MAGIC or seg.size != HEADER_BYTES + r.size:
        seg.close()
        raise ValueError("%s is not an sv3 ring" % name)
    return seg
