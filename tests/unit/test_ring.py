"""SPSC ring (sv3/_native/ring.c via sv3.shm.ring): ordering, wrap, full
ring drops, doorbell handshake, and a producer and consumer in two processes."""
import os
import random
import struct
import subprocess
import sys
import uuid

from hypothesis import given, settings, strategies as st

from sv3._native import ffi, lib
from sv3.shm import ring


def make(size=4096):
    name = "/sv3test.%s" % uuid.uuid4().hex[:12]
    seg = ring.create(name, size)
    seg.unlink()           # the mapping stays valid; nothing left behind
    r = seg.cast("struct sv3_ring *")
    prod = ffi.new("struct sv3_ring_prod *")
    cons = ffi.new("struct sv3_ring_cons *")
    lib.sv3_ring_prod_attach(prod, r, -1, 1)
    lib.sv3_ring_cons_attach(cons, r)
    return seg, r, prod, cons


def enqueue(prod, frames):
    lens = ffi.new("uint32_t[]", [len(f) for f in frames] or [0])
    return lib.sv3_ring_enqueue_burst(prod, b"".join(frames), lens, len(frames))


def dequeue(cons, n=64, buflen=1 << 20):
    buf = ffi.new("uint8_t[]", buflen)
    lens = ffi.new("uint32_t[]", n)
    got = lib.sv3_ring_dequeue_burst(cons, buf, buflen, lens, n)
    out, off = [], 0
    for i in range(got):
        out.append(ffi.buffer(buf + off, lens[i])[:])
        off += lens[i]
    return out


def test_fifo_order_and_contents():
    seg, r, prod, cons = make()
    frames = [bytes([i]) * (60 + i) for i in range(10)]
    assert enqueue(prod, frames) == 10
    assert dequeue(cons) == frames
    assert dequeue(cons) == []
    assert r.frames == 10 and r.drops == 0
    seg.close()


def test_full_ring_drops_and_counts():
    seg, r, prod, cons = make(4096)
    frame = b"x" * 1000                       # 1016-byte records: 4 fit
    assert enqueue(prod, [frame] * 6) == 4
    assert r.drops == 1                       # the burst stops at the first drop
    assert len(dequeue(cons)) == 4
    assert enqueue(prod, [frame] * 2) == 2    # room again after the consumer moved
    seg.close()


def test_oversize_frame_is_refused():
    seg, r, prod, cons = make(4096)
    assert enqueue(prod, [b"y" * 3000]) == 0  # more than half the ring
    assert r.drops == 1
    seg.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=1, max_value=1500), max_size=12), max_size=40))
def test_matches_a_fifo_model_across_wraps(bursts):
    seg, r, prod, cons = make(8192)
    model = []
    rng = random.Random(len(bursts))
    for burst in bursts:
        frames = [os.urandom(1)[:1] * n for n in burst]
        k = enqueue(prod, frames)
        model.extend(frames[:k])
        if rng.random() < 0.6:
            got = dequeue(cons, n=rng.randint(1, 16))
            assert got == model[:len(got)]
            del model[:len(got)]
    assert dequeue(cons, n=10000) == model
    seg.close()


def test_doorbell_rung_only_for_a_waiting_consumer():
    seg, r, prod, cons = make()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    lib.sv3_ring_prod_attach(prod, r, efd, 1)
    enqueue(prod, [b"a" * 64])
    try:
        os.eventfd_read(efd)
        rung = True
    except BlockingIOError:
        rung = False
    assert not rung
    r.waiting = 1                             # consumer about to sleep
    enqueue(prod, [b"b" * 64])
    assert os.eventfd_read(efd) == 1
    assert r.waiting == 0                     # the producer took the flag
    os.close(efd)
    seg.close()


PRODUCER = r"""
import struct, sys
from sv3._native import ffi, lib
from sv3.shm import ring
seg = ring.attach(sys.argv[1]); r = seg.cast("struct sv3_ring *")
prod = ffi.new("struct sv3_ring_prod *"); lib.sv3_ring_prod_attach(prod, r, -1, 1)
n, seq = int(sys.argv[2]), 0
lens = ffi.new("uint32_t[]", 32)
while seq < n:
    k = min(32, n - seq)
    frames = b"".join(struct.pack("<Q", s) * (8 + s % 8) for s in range(seq, seq + k))
    for i in range(k): lens[i] = 8 * (8 + (seq + i) % 8)
    r.drops = 0
    sent = lib.sv3_ring_enqueue_burst(prod, frames, lens, k)
    seq += sent
"""


def test_two_processes_keep_order_and_lose_nothing():
    name = "/sv3test.%s" % uuid.uuid4().hex[:12]
    seg = ring.create(name, 16384)
    try:
        cons = ffi.new("struct sv3_ring_cons *")
        lib.sv3_ring_cons_attach(cons, seg.cast("struct sv3_ring *"))
        n = 200000
        proc = subprocess.Popen([sys.executable, "-c", PRODUCER, name, str(n)])
        expect = 0
        while expect < n:
            for f in dequeue(cons, n=64, buflen=1 << 16):
                (seq,) = struct.unpack_from("<Q", f)
                assert seq == expect and f == struct.pack("<Q", seq) * (8 + seq % 8)
                expect += 1
            assert proc.poll() in (None, 0)
        assert proc.wait(30) == 0
        assert dequeue(cons) == []
    finally:
        seg.unlink()
        seg.close()
