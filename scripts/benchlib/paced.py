"""An open-loop, paced traffic source and sink for the zero-loss benchmark.

testpmd sends as fast as it can and has no software rate limit for
virtio-user ports, so the zero-loss scenario uses its own front-end: two
vhost-user connections (tests/fakes/frontend.py: sealed memfd guest
memory, the QEMU handshake), one that only transmits and one that only
receives.  The per-frame work (stamping a sequence number, avail/used ring
updates, checking the sequence on receipt) is a small C driver compiled
by cffi at run time; Python paces it, crossing into C once per batch.

Every TX descriptor owns one buffer holding a 12-byte virtio-net header and
a fixed frame (port A's MAC to port B's, EtherType 0x88b5, local
experimental) whose first payload bytes carry a 64-bit sequence number.
The sink re-posts each RX buffer as soon as it is read and counts frames
received, sequence gaps (lost) and frames older than expected
(reordered or duplicated).  late_bursts counts the times a due burst did
not fit into the source's TX vring (the switch had not taken the previous
ones yet): those frames go out late, as a guest's would."""
from __future__ import annotations

import importlib.util
import os
import struct
import time

import cffi

STRUCT = """
struct drv {
    uint8_t *desc, *avail, *used;
    uint8_t *bufs[1024];
    uint16_t num, avail_idx, last_used, nfree;
    uint16_t free_ids[1024];
    uint64_t seq, rx_frames, rx_lost, rx_old, expect;
};
"""
CDEF = STRUCT + """
int drv_tx(struct drv *d, uint32_t n);
int drv_rx(struct drv *d);
int drv_kick_wanted(struct drv *d);
"""

SRC = "#include <stdint.h>\n#include <string.h>\n" + STRUCT + r"""
#define SEQ_OFF (12 + 14)
static uint16_t ld16(uint8_t *p) { return __atomic_load_n((uint16_t *)p, __ATOMIC_ACQUIRE); }
static void st16(uint8_t *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE); }
static uint32_t used_id(struct drv *d, uint16_t i) {
    uint32_t id;
    memcpy(&id, d->used + 4 + 8 * (i % d->num), 4);
    return id % d->num;
}
static void post(struct drv *d, uint16_t id) {
    memcpy(d->avail + 4 + 2 * (d->avail_idx % d->num), &id, 2);
    d->avail_idx++;
}
/* Transmit: take back used descriptors, then post up to n stamped frames. */
int drv_tx(struct drv *d, uint32_t n) {
    uint16_t u = ld16(d->used + 2);
    uint32_t k;
    while (d->last_used != u)
        d->free_ids[d->nfree++] = (uint16_t)used_id(d, d->last_used++);
    for (k = 0; k < n && d->nfree; k++) {
        uint16_t id = d->free_ids[--d->nfree];
        memcpy(d->bufs[id] + SEQ_OFF, &d->seq, 8);
        d->seq++;
        post(d, id);
    }
    if (k)
        st16(d->avail + 2, d->avail_idx);
    return (int)k;
}
/* Receive: check and count every used buffer, then post it again. */
int drv_rx(struct drv *d) {
    uint16_t u = ld16(d->used + 2);
    int n = 0;
    while (d->last_used != u) {
        uint16_t id = (uint16_t)used_id(d, d->last_used++);
        uint64_t seq;
        memcpy(&seq, d->bufs[id] + SEQ_OFF, 8);
        if (seq >= d->expect) {
            d->rx_lost += seq - d->expect;
            d->expect = seq + 1;
        } else {
            d->rx_old++;
        }
        d->rx_frames++;
        post(d, id);
        n++;
    }
    if (n)
        st16(d->avail + 2, d->avail_idx);
    return n;
}
/* The device asked for kicks (VIRTQ_USED_F_NO_NOTIFY clear). */
int drv_kick_wanted(struct drv *d) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return !(ld16(d->used) & 1);
}
"""

ETHERTYPE = 0x88B5
BURST = 32          # frames per transmit batch, like a DPDK application
VRING_AVAIL_F_NO_INTERRUPT = 1


def build(workdir):
    """Compile the driver into workdir; returns (ffi, lib)."""
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_sv3_paced", SRC, extra_compile_args=["-O2"])
    path = ffi.compile(tmpdir=workdir, verbose=False)
    spec = importlib.util.spec_from_file_location("_sv3_paced", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


class Side:
    """One front-end connection driven by the C driver: a source (vring 1,
    guest TX) or a sink (vring 0, guest RX)."""

    def __init__(self, ffi, lib, frontend_cls, path, vring, frame=None):
        self.lib = lib
        self.fe = frontend_cls(path).attach()
        vr = self.fe.vrings[vring]
        mem = self.fe.mem
        self.kick_fd = self.fe.kick[vring]
        d = self.d = ffi.new("struct drv *")
        base = mem.base
        d.desc = ffi.cast("uint8_t *", base + mem.off(vr.desc))
        d.avail = ffi.cast("uint8_t *", base + mem.off(vr.avail))
        d.used = ffi.cast("uint8_t *", base + mem.off(vr.used_gpa))
        d.num = vr.num
        d.avail_idx = d.last_used = vr.avail_idx
        for i in range(vr.num):
            d.bufs[i] = ffi.cast("uint8_t *", base + mem.off(vr.bufs[i]))
        mem.set_u16(vr.avail, VRING_AVAIL_F_NO_INTERRUPT)   # we poll
        if frame is None:             # sink: every descriptor posted, writable
            for i in range(vr.num):
                vr.set_desc(i, vr.bufs[i], vr.buf_size, 2)
                mem.set_u16(vr.avail + 4 + 2 * ((d.avail_idx + i) % vr.num), i)
            d.avail_idx = (d.avail_idx + vr.num) & 0xFFFF
            mem.set_u16(vr.avail + 2, d.avail_idx)
            self.kick()
        else:                         # source: descriptor i always holds buffer i
            data = bytes(12) + frame
            for i in range(vr.num):
                mem.write(vr.bufs[i], data)
                vr.set_desc(i, vr.bufs[i], len(data), 0)
                d.free_ids[i] = vr.num - 1 - i
            d.nfree = vr.num

    def kick(self):
        os.write(self.kick_fd, struct.pack("<Q", 1))

    def kick_if_wanted(self):
        if self.lib.drv_kick_wanted(self.d):
            self.kick()

    def close(self):
        self.fe.close()


def frame_of(src, dst, size):
    head = mac_bytes(dst) + mac_bytes(src) + struct.pack(">H", ETHERTYPE)
    return head + bytes(max(0, size - len(head)))


def run(workdir, frontend_cls, path, mac_a, mac_b, size, rate_pps, seconds, drain_s=0.5):
    """Send size-byte frames from a new port A to a new port B at rate_pps
    (0: as fast as possible) for seconds; returns the counts."""
    ffi, lib = build(workdir)
    sink = Side(ffi, lib, frontend_cls, path, 0)
    source = Side(ffi, lib, frontend_cls, path, 1, frame_of(mac_a, mac_b, size))
    try:
        # One frame from B teaches the switch B's MAC, so A's frames are
        # unicast from the first one (it waits in A's inbound ring: A
        # never posts receive buffers).
        sink.fe.tx.add_tx(frame_of(mac_b, mac_a, size))
        os.write(sink.fe.kick[1], struct.pack("<Q", 1))
        time.sleep(0.3)
        return _pace(lib, source, sink, rate_pps, seconds, drain_s)
    finally:
        source.close()
        sink.close()


def _pace(lib, source, sink, rate_pps, seconds, drain_s):
    sent = late = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        want = min(int(rate_pps * (now - start)) - sent, 256) if rate_pps else 256
        if want >= BURST:
            n = lib.drv_tx(source.d, want)
            sent += n
            late += n < want
            if n:
                source.kick_if_wanted()
        if lib.drv_rx(sink.d):
            sink.kick_if_wanted()
    elapsed = time.perf_counter() - start
    deadline = time.perf_counter() + drain_s
    while time.perf_counter() < deadline:
        if lib.drv_rx(sink.d):
            sink.kick_if_wanted()
    d = sink.d
    return {"sent": sent, "received": d.rx_frames, "lost": d.rx_lost,
            "reordered": d.rx_old, "seconds": elapsed,
            "offered_mpps": rate_pps / 1e6, "sent_mpps": sent / elapsed / 1e6,
            "received_mpps": d.rx_frames / elapsed / 1e6,
            "late_bursts": late}
