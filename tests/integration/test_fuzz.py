"""Fault tests: malformed vhost-user sessions hurt only their own port.

Sessions come from a seeded generator: QEMU 7.2's attach sequence, mutated
(dropped, repeated, reordered and unknown messages, bad version flags,
wrong payload sizes and size fields, missing or extra fds, fds that are not
memory or are shorter than their region, overlapping, overflowing and huge
regions, ring addresses outside every region, vring indexes and sizes out of
range, messages before SET_MEM_TABLE, garbage written into the rings) and
ended at any point (abrupt close, close inside a message, garbage, replies
never read, a clean device stop).

* test_fuzzed_sessions_hurt_only_their_own_port: sessions against a real
  switch while a pair of fake front-ends (tests/fakes/frontend.py) forwards
  numbered frames through it; afterwards the master is alive and accepts,
  the pair lost nothing, no worker or /dev/shm segment of a finished session
  is left, and no worker died of an exception.
* test_backend_in_process_fuzz: the same generator straight into
  sv3.vhost.backend.Backend over a socketpair (thousands of sessions a
  second): only channel.ConnectionClosed / ProtocolError may escape, replies
  follow the protocol, no fd or mapping leaks, the port struct never points
  outside guest memory, and the C core runs on whatever state is left.

Budget (environment): SV3_FUZZ_SEED (default 1), SV3_FUZZ_SESSIONS,
SV3_FUZZ_SECONDS.  Real switch: at most SV3_FUZZ_SESSIONS sessions, at most
SV3_FUZZ_SECONDS seconds (default 40 s, about 60 s with setup).  In process:
20 000 sessions or 20 s by default; if either variable is set, exactly the
limits given (SV3_FUZZ_SESSIONS=100000 alone runs 100 000 sessions).
Session N of seed S is random.Random("S:N"): a failure names S and N, and
generate(random.Random("S:N"), Pool()) rebuilds that session.
"""
import collections
import logging
import os
import random
import re
import socket
import struct
import tempfile
import time

from sv3._native import ffi, lib
from sv3.shm import names
from sv3.vhost import backend as B
from sv3.vhost.channel import ConnectionClosed, ProtocolError, recv_message
from tests.fakes.frontend import (FLAG_NEED_REPLY, FLAG_REPLY, HEADER, MEM_TABLE_HEAD, U64, VERSION,
                                  VRING_ADDR, VRING_NOFD, VRING_STATE, GuestMemory, TrafficPair, Vring,
                                  attach_port, frame, mac)
from tests.helpers.vhost_client import VhostClient

R = B.R                                   # request ids (sv3.vhost.protocol.Request)
REPLY_ACK = 1 << 3
GET_REQUESTS = {R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM, R.GET_VRING_BASE}
UNKNOWN_REQUESTS = [0, 6, 7, 19, 20, 21, 22, 23, 24, 25, 31, 32, 34, 35, 36, 37, 38, 39, 40, 41, 99,
                    0x7FFFFFFF, 0xFFFFFFFF]
POOL_NUM = 64                             # vring size of the fuzz sessions' rings


# -- budget ---------------------------------------------------------------------

def _env(name, kind):
    v = os.environ.get(name)
    return kind(v) if v else None


def seed():
    return _env("SV3_FUZZ_SEED", int) or 1


def remote_budget():
    return _env("SV3_FUZZ_SESSIONS", int), _env("SV3_FUZZ_SECONDS", float) or 40.0


def local_budget():
    n, t = _env("SV3_FUZZ_SESSIONS", int), _env("SV3_FUZZ_SECONDS", float)
    return (20000, 20.0) if n is None and t is None else (n, t)


def within(budget, n, t0):
    limit_n, limit_t = budget
    return (limit_n is None or n < limit_n) and (limit_t is None or time.monotonic() - t0 < limit_t)


# -- what a session may attach ----------------------------------------------------

class Pool:
    """Guest memory and file descriptors the sessions attach, made once.
    SCM_RIGHTS duplicates what is sent, so one fd per kind serves every
    session.  Kinds: 'mem' the guest memory memfd, then things that must be
    refused as memory or that are odd but legal."""
    BAD_KINDS = ("mem_short", "mem_ro", "opath", "pipe", "socket", "null", "eventfd", "dir")

    def __init__(self, region_size=1 << 20):
        self.mem = GuestMemory(region_size=region_size, nregions=2, name="sv3fuzz")
        self.vrings = [Vring(self.mem, 0, POOL_NUM), Vring(self.mem, 1, POOL_NUM)]
        self.fds, self._extra = {"mem": self.mem.fd}, []
        short = os.memfd_create("sv3fuzz-short", os.MFD_CLOEXEC)
        os.ftruncate(short, 4096)                               # shorter than any region
        huge = os.memfd_create("sv3fuzz-huge", os.MFD_CLOEXEC)
        os.ftruncate(huge, 1 << 36)                             # sparse 64 GiB
        self.tmp = tempfile.TemporaryFile()
        os.ftruncate(self.tmp.fileno(), self.mem.file_size)     # a plain file: legal memory
        r, w = os.pipe()
        s1, s2 = socket.socketpair()
        self._sockets = [s1, s2]
        self.fds.update({
            "mem_short": short, "mem_huge": huge, "file": self.tmp.fileno(),
            "mem_ro": os.open("/proc/self/fd/%d" % self.mem.fd, os.O_RDONLY | os.O_CLOEXEC),
            "opath": os.open("/proc/self/fd/%d" % self.mem.fd, os.O_PATH | os.O_CLOEXEC),
            "pipe": r, "socket": s1.fileno(),
            "null": os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC),
            "eventfd": os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK),
            "dir": os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
        })
        self._extra = [w]
        self.kinds = sorted(self.fds)

    def get(self, kind):
        return self.fds[kind]

    def close(self):
        for kind, fd in self.fds.items():
            if kind not in ("mem", "socket", "file"):
                os.close(fd)
        for fd in self._extra:
            os.close(fd)
        for s in self._sockets:
            s.close()
        self.tmp.close()
        self.mem.close()


# -- sessions ---------------------------------------------------------------------

class Msg:
    """One message; fds are Pool kinds; size overrides the header's size."""
    __slots__ = ("request", "payload", "flags", "fds", "size")

    def __init__(self, request, payload=b"", flags=VERSION, fds=(), size=None):
        self.request, self.payload, self.flags, self.fds, self.size = request, payload, flags, list(fds), size

    def wire(self):
        return HEADER.pack(self.request, self.flags, len(self.payload) if self.size is None else self.size) \
            + self.payload


class Raw:
    """Bytes that are not one whole message (a torn message, garbage)."""
    __slots__ = ("data", "fds")

    def __init__(self, data, fds=()):
        self.data, self.fds = data, list(fds)

    def wire(self):
        return self.data


class Op:
    """Not a message: 'read' replies, 'fresh' (zeroed rings), 'scribble'
    on the rings, 'frames' (raw chains posted and kicked)."""
    __slots__ = ("kind",)

    def __init__(self, kind):
        self.kind = kind


class Session:
    """abrupt: None (half-close, replies read), 'eager' (close; the back-end
    kept up), 'late' (close before the back-end read anything)."""

    def __init__(self, actions, notes, abrupt):
        self.actions, self.notes, self.abrupt = actions, notes, abrupt

    def describe(self):
        return ", ".join(self.notes) or "valid attach"


def u64(v):
    return U64.pack(v & (2**64 - 1))


def state(i, n):
    return VRING_STATE.pack(i & 0xFFFFFFFF, n & 0xFFFFFFFF)


def mem_table(regions, count=None):
    """regions: [(gpa, size, qva, offset)]."""
    return MEM_TABLE_HEAD.pack(len(regions) if count is None else count, 0) + b"".join(
        struct.pack("<QQQQ", *(x & (2**64 - 1) for x in r)) for r in regions)


def pool_regions(pool):
    return [(r.gpa, r.size, r.qva, r.offset) for r in pool.mem.regions]


def valid_sequence(rng, pool):
    """QEMU 7.2's connect + DRIVER_OK messages for the pool's memory."""
    feats = B.FEATURES & (rng.getrandbits(64) | (1 << 32))
    if rng.random() < 0.9:
        feats |= 1 << 30
    proto = B.PROTOCOL_FEATURES if rng.random() < 0.8 else 0
    ack = FLAG_NEED_REPLY if proto & REPLY_ACK else 0
    msgs = [Msg(R.GET_FEATURES), Msg(R.GET_PROTOCOL_FEATURES), Msg(R.SET_PROTOCOL_FEATURES, u64(proto)),
            Msg(R.GET_QUEUE_NUM), Msg(R.SET_OWNER), Msg(R.GET_FEATURES)]
    for i in (0, 1):
        msgs += [Msg(R.SET_VRING_CALL, u64(i), fds=["eventfd"]), Msg(R.SET_VRING_ERR, u64(i), fds=["eventfd"])]
    msgs += [Msg(R.SET_VRING_ENABLE, state(i, 1)) for i in (0, 1)]
    msgs += [Msg(R.SET_FEATURES, u64(feats)),
             Msg(R.SET_MEM_TABLE, mem_table(pool_regions(pool)), VERSION | ack, ["mem"] * 2)]
    for vr in pool.vrings:
        msgs += [Msg(R.SET_VRING_NUM, state(vr.index, vr.num)), Msg(R.SET_VRING_BASE, state(vr.index, 0)),
                 Msg(R.SET_VRING_ADDR, vr.addr_payload()),
                 Msg(R.SET_VRING_KICK, u64(vr.index), fds=["eventfd"]),
                 Msg(R.SET_VRING_CALL, u64(vr.index), fds=["eventfd"])]
    return msgs + [Msg(R.GET_FEATURES)]


def _pick(rng, msgs, requests=None):
    idx = [i for i, m in enumerate(msgs) if isinstance(m, Msg) and (requests is None or m.request in requests)]
    return rng.choice(idx) if idx else None


def bad_addresses(rng, pool):
    m = pool.mem
    r0, r1 = m.regions
    return rng.choice([
        0, 0x1000, m.start - 16,                       # below every region
        r0.gpa + 0x1000,                               # a GPA where a QVA belongs
        r1.qva + r1.size - 8, r0.qva + r0.size - 8,    # straddles a region's end
        r0.qva + r0.size,                              # just past region 0 (region 1 is far away)
        r0.qva + 0x1001, r1.qva + 0x2002,              # misaligned
        2**64 - 16, 2**63, rng.getrandbits(64)])


def mutate_table(rng, pool):
    """A SET_MEM_TABLE payload and its fd kinds that is wrong in one way
    (or, for the last few, odd but legal)."""
    regs = [list(r) for r in pool_regions(pool)]
    fds, count = ["mem"] * len(regs), None
    what = rng.randrange(14)
    if what == 0:
        count = rng.choice([0, 3, 9, 255, 2**32 - 1])
    elif what == 1:
        regs[rng.randrange(2)][1] = 0
    elif what == 2:
        regs[rng.randrange(2)][1] = rng.choice([2**63, 2**64 - 1, 1 << 40, pool.mem.file_size + 4096])
    elif what == 3:
        regs[rng.randrange(2)][rng.choice([0, 2, 3])] = 2**64 - 4096
    elif what == 4:
        regs[1][0] = regs[0][0] + 0x1000                   # GPA ranges overlap
    elif what == 5:
        regs[1][2] = regs[0][2] + 0x1000                   # QVA ranges overlap
    elif what == 6:
        regs[rng.randrange(2)][3] = rng.choice([pool.mem.file_size, 1 << 40, 12345])
    elif what == 7:
        fds = fds[:1] if rng.random() < 0.5 else fds + ["mem"]
    elif what == 8:
        fds[rng.randrange(2)] = rng.choice(Pool.BAD_KINDS)
    elif what == 9:
        regs = regs + [regs[0]]                            # the same region twice
        fds.append("mem")
    elif what == 10:                                       # 8 legal slices of the memfd
        step = pool.mem.regions[0].size // 8
        regs = [[0x100000 + k * step, step, 0x7e0000000000 + k * 2 * step, k * step] for k in range(8)]
        fds = ["mem"] * 8
    elif what == 11:                                       # 64 GiB sparse region at the pool's QVA
        regs, fds = [[0x100000, 1 << 36, pool.mem.regions[0].qva, 0]], ["mem_huge"]
    elif what == 12:                                       # virtio-user style: GPA == QVA
        regs = [[r[2], r[1], r[2], r[3]] for r in regs]
    else:
        fds = ["file"] * 2                                 # a plain file: legal memory
    payload = mem_table(regs, count)
    if rng.random() < 0.1:
        payload += rng.randbytes(rng.choice([1, 8, 32]))
    return payload, fds


def m_drop(rng, msgs, pool):
    if msgs:
        del msgs[rng.randrange(len(msgs))]


def m_dup(rng, msgs, pool):
    if msgs:
        i = rng.randrange(len(msgs))
        msgs.insert(rng.randrange(len(msgs) + 1), msgs[i])


def m_move(rng, msgs, pool):
    if msgs:
        msgs.insert(rng.randrange(len(msgs)), msgs.pop(rng.randrange(len(msgs))))


def m_shuffle(rng, msgs, pool):
    rng.shuffle(msgs)


def m_request(rng, msgs, pool):
    i = _pick(rng, msgs)
    if i is not None:
        m = msgs[i]
        msgs[i] = Msg(rng.choice(UNKNOWN_REQUESTS), m.payload, m.flags, m.fds)


def m_flags(rng, msgs, pool):
    i = _pick(rng, msgs)
    if i is not None:
        m = msgs[i]
        bad = rng.choice([0, 2, 3, VERSION | FLAG_REPLY, VERSION | FLAG_NEED_REPLY, 0xFFFFFFFF,
                          VERSION | rng.getrandbits(32) & ~3, rng.getrandbits(32)])
        msgs[i] = Msg(m.request, m.payload, bad, m.fds)


def m_payload(rng, msgs, pool):
    i = _pick(rng, msgs)
    if i is not None:
        m, p = msgs[i], msgs[i].payload
        p = rng.choice([p[:rng.randrange(len(p))] if p else b"\0", p + rng.randbytes(rng.randint(1, 16)),
                        rng.randbytes(rng.choice([0, 1, 7, 8, 9, 16, 40, 41, 200, 4096]))])
        msgs[i] = Msg(m.request, p, m.flags, m.fds)


def m_size_field(rng, msgs, pool):
    i = _pick(rng, msgs)
    if i is not None:
        m, n = msgs[i], len(msgs[i].payload)
        msgs[i] = Msg(m.request, m.payload, m.flags, m.fds,
                      size=rng.choice([n + 1, n + 8, max(n - 1, 0), 4097, 2**32 - 1, rng.randrange(64)]))


def m_fds(rng, msgs, pool):
    i = _pick(rng, msgs)
    if i is not None:
        m = msgs[i]
        how = rng.randrange(3)
        if how == 0:
            fds = m.fds + [rng.choice(pool.kinds) for _ in range(rng.randint(1, 10))]
        elif how == 1:
            fds = m.fds[:rng.randrange(len(m.fds))] if m.fds else []
        else:
            fds = [rng.choice(Pool.BAD_KINDS) for _ in m.fds or [0]]
        msgs[i] = Msg(m.request, m.payload, m.flags, fds, m.size)


def m_table(rng, msgs, pool):
    payload, fds = mutate_table(rng, pool)
    i = _pick(rng, msgs, {R.SET_MEM_TABLE})
    flags = rng.choice([VERSION, VERSION | FLAG_NEED_REPLY])
    if i is None or rng.random() < 0.3:
        msgs.insert(rng.randrange(len(msgs) + 1), Msg(R.SET_MEM_TABLE, payload, flags, fds))
    else:
        msgs[i] = Msg(R.SET_MEM_TABLE, payload, flags, fds)


def m_vring_index(rng, msgs, pool):
    i = _pick(rng, msgs, {R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE, R.SET_VRING_ADDR,
                          R.SET_VRING_ENABLE, R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR})
    if i is None:
        return
    m = msgs[i]
    if m.request in (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR):
        v = U64.unpack(m.payload)[0] if len(m.payload) == 8 else 0
        p = u64(rng.choice([2, 3, 255, v | 1 << 9, v | 1 << 63, v | VRING_NOFD, 2**64 - 1]))
    else:
        p = struct.pack("<I", rng.choice([2, 3, 255, 256, 2**31, 2**32 - 1])) + m.payload[4:]
    msgs[i] = Msg(m.request, p, m.flags, m.fds)


def m_vring_value(rng, msgs, pool):
    i = _pick(rng, msgs, {R.SET_VRING_NUM, R.SET_VRING_BASE, R.SET_VRING_ADDR})
    if i is None or len(msgs[i].payload) < 8:
        return
    m = msgs[i]
    if m.request == R.SET_VRING_ADDR and len(m.payload) == VRING_ADDR.size:
        f = list(VRING_ADDR.unpack(m.payload))
        f[rng.choice([2, 3, 4])] = bad_addresses(rng, pool)
        p = VRING_ADDR.pack(*f)
    else:
        index = struct.unpack_from("<I", m.payload)[0]
        p = state(index, rng.choice([0, 1, 2, 3, 100, 1024, 32768, 65536, 2**32 - 1, rng.getrandbits(32)]))
    msgs[i] = Msg(m.request, p, m.flags, m.fds)


def m_features(rng, msgs, pool):
    i = _pick(rng, msgs, {R.SET_FEATURES, R.SET_PROTOCOL_FEATURES})
    if i is not None:
        m = msgs[i]
        bits = [0, 1, 5, 24, 26, 31, 33, 34, 40, 63] if m.request == R.SET_FEATURES else [1, 2, 4, 5, 9, 15, 16, 63]
        v = U64.unpack(m.payload)[0] if len(m.payload) == 8 else 0
        msgs[i] = Msg(m.request, u64(v | 1 << rng.choice(bits)), m.flags, m.fds)


def m_insert(rng, msgs, pool):
    """A message that is legal on its own, at a random point."""
    i, k = rng.randrange(2), rng.randrange(len(msgs) + 1)
    table, fds = (mem_table(pool_regions(pool)), ["mem"] * 2) if rng.random() < 0.5 else mutate_table(rng, pool)
    msgs.insert(k, rng.choice([
        Msg(R.GET_VRING_BASE, state(i, 0)), Msg(R.RESET_OWNER), Msg(R.SET_MEM_TABLE, table, VERSION, fds),
        Msg(R.SET_VRING_ENABLE, state(i, 0)), Msg(R.SET_VRING_KICK, u64(i | VRING_NOFD)),
        Msg(R.SET_VRING_CALL, u64(i | VRING_NOFD)), Msg(R.SET_VRING_NUM, state(i, POOL_NUM // 2)),
        Msg(R.SET_VRING_ADDR, VRING_ADDR.pack(i, 0, *VRING_ADDR.unpack(pool.vrings[1 - i].addr_payload())[2:])),
        Msg(R.SET_FEATURES, u64(B.FEATURES)), Msg(R.GET_FEATURES, flags=VERSION | FLAG_NEED_REPLY)]))


def m_random(rng, msgs, pool):
    msgs.insert(rng.randrange(len(msgs) + 1),
                Msg(rng.randrange(45), rng.randbytes(rng.choice([0, 8, 16, 40, rng.randrange(300)])),
                    rng.choice([VERSION, VERSION | FLAG_NEED_REPLY]),
                    [rng.choice(pool.kinds) for _ in range(rng.choice([0, 0, 1, 2]))]))


def m_before_table(rng, msgs, pool):
    """A vring message moved in front of SET_MEM_TABLE (or of everything)."""
    i = _pick(rng, msgs, {R.SET_VRING_NUM, R.SET_VRING_ADDR, R.SET_VRING_BASE, R.SET_VRING_KICK})
    t = _pick(rng, msgs, {R.SET_MEM_TABLE})
    if i is not None:
        msgs.insert(t if t is not None and t < i else 0, msgs.pop(i))


def m_ring_op(rng, msgs, pool):
    msgs.insert(rng.randrange(len(msgs) // 2, len(msgs) + 1), Op(rng.choice(["scribble", "frames"])))


MUTATIONS = [(f.__name__[2:], f) for f in (
    m_drop, m_dup, m_move, m_shuffle, m_request, m_flags, m_payload, m_size_field, m_fds, m_table,
    m_vring_index, m_vring_value, m_features, m_insert, m_random, m_before_table, m_ring_op)]


def generate(rng, pool):
    msgs, notes = valid_sequence(rng, pool), []
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4, 6])):
        name, fn = rng.choice(MUTATIONS)
        fn(rng, msgs, pool)
        notes.append(name)
    ending = rng.choice(["all", "all", "cut", "cut", "torn", "garbage", "stop"])
    if ending == "cut":
        msgs = msgs[:rng.randrange(len(msgs) + 1)]
    elif ending == "torn":
        k = rng.randrange(len(msgs) + 1)
        msgs, last = msgs[:k], msgs[k] if k < len(msgs) else Msg(R.GET_FEATURES)
        if isinstance(last, Op):
            last = Msg(R.SET_OWNER)
        wire = last.wire()
        msgs.append(Raw(wire[:rng.randrange(1, len(wire))], last.fds))
    elif ending == "garbage":
        msgs.append(Raw(rng.randbytes(rng.randint(1, 64)), [rng.choice(pool.kinds)] if rng.random() < 0.3 else []))
    elif ending == "stop":
        msgs += [Msg(R.GET_VRING_BASE, state(0, 0)), Msg(R.GET_VRING_BASE, state(1, 0))]
    notes.append("ends " + ending)
    if rng.random() < 0.3:
        for _ in range(rng.randint(1, 4)):
            msgs.insert(rng.randrange(len(msgs) + 1), Op("read"))
        notes.append("reads replies")
    abrupt = rng.choice([None, None, None, None, "eager", "late"])
    if abrupt:
        notes.append("closes abruptly (%s)" % abrupt)
    if rng.random() < 0.5:
        msgs.insert(0, Op("fresh"))                        # clean rings, not earlier sessions' garbage
    return Session(msgs, notes, abrupt)


# -- ring operations inside a session ------------------------------------------------

def scribble(rng, pool):
    """Garbage into the session rings: descriptors, indexes, used entries."""
    for _ in range(rng.randint(1, 8)):
        vr = rng.choice(pool.vrings)
        base, size = rng.choice([(vr.desc, 16 * vr.num), (vr.avail, 6 + 2 * vr.num), (vr.used_gpa, 6 + 8 * vr.num)])
        n = rng.choice([1, 2, 8, 16])
        pool.mem.write(base + rng.randrange(size - n), rng.randbytes(n))
    if rng.random() < 0.3:
        rng.choice(pool.vrings).set_avail_idx(rng.getrandbits(16))


def post_frames(rng, pool):
    """A few chains, sane or not, posted in both session rings and kicked."""
    m = pool.mem
    for vr in pool.vrings:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(vr.num)
            addr = rng.choice([vr.bufs[i], vr.bufs[i], m.boundary() - 30, m.end - 8, 0, 2**64 - 8])
            length = rng.choice([0, 1, 12, 26, 60, 1514, 2048, 65536, 2**32 - 1])
            flags = rng.choice([0, 0, 2, 1, 4, 3, 7]) if rng.random() < 0.5 else (2 if vr.index == 0 else 0)
            if length and addr == vr.bufs[i] and length <= vr.buf_size:
                m.write(addr, bytes(12) + frame(b"\xff" * 6, mac(0xF00 + i), size=max(0, length - 12))[:length - 12])
            vr.set_desc(i, addr, length, flags, rng.randrange(vr.num + 2))
            vr.post(i if rng.random() < 0.9 else rng.randrange(2**16))
    os.eventfd_write(pool.get("eventfd"), 1)


def ring_op(kind, rng, pool):
    if kind == "fresh":
        for vr in pool.vrings:
            vr.reinit()
    else:
        (scribble if kind == "scribble" else post_frames)(rng, pool)


# -- (a) against a real switch ----------------------------------------------------------

def connect(path, patience=30.0):
    """A connection to the switch; waits while its listen backlog is full
    (EAGAIN), for at most `patience` seconds.  Returns (socket, seconds waited)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    t0 = time.monotonic()
    while True:
        try:
            s.connect(path)
            break
        except BlockingIOError:
            assert time.monotonic() - t0 < patience, "the master accepted nothing for %.0f s" % patience
            time.sleep(0.005)
    s.settimeout(2.0)
    return s, time.monotonic() - t0


class Lingering:
    """Half-closed sessions whose worker has not hung up yet: their replies
    are drained until EOF (the worker is done), at most `patience` s."""

    def __init__(self, patience=10.0):
        self.socks, self.patience, self.hung = {}, patience, []

    def add(self, s, label):
        s.setblocking(False)
        self.socks[s] = (time.monotonic(), label)

    def poll(self):
        for s, (t0, label) in list(self.socks.items()):
            try:
                while True:
                    if not s.recv(65536):
                        break                       # EOF: the worker is done with us
            except BlockingIOError:
                if time.monotonic() - t0 < self.patience:
                    continue
                self.hung.append(label)
            except OSError:
                pass
            s.close()
            del self.socks[s]

    def wait(self):
        while self.socks:
            self.poll()
            time.sleep(0.01)


def run_remote(path, session, pool, rng, lingering, label):
    """Play one session on a new connection.  Abrupt sessions close at
    once; the others half-close and wait in `lingering` for the worker to
    hang up.  Returns the seconds connect() waited for the master."""
    s, waited = connect(path)
    try:
        for act in session.actions:
            if isinstance(act, Op):
                if act.kind == "read":
                    s.settimeout(0.02)
                    try:
                        while s.recv(4096):
                            pass
                    except (socket.timeout, BlockingIOError):
                        pass
                    s.settimeout(2.0)
                else:
                    ring_op(act.kind, rng, pool)
                continue
            data, fds = act.wire(), [pool.get(k) for k in act.fds]
            if fds:
                socket.send_fds(s, [data], fds[:250])
            else:
                s.sendall(data)
        if not session.abrupt:
            s.shutdown(socket.SHUT_WR)
            lingering.add(s, label)
            return waited
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass                                # the worker hung up on us: fine
    s.close()
    return waited


def test_fuzzed_sessions_hurt_only_their_own_port(switch):
    budget, base = remote_budget(), seed()
    a, row_a = attach_port(switch)
    b, row_b = attach_port(switch, enable_last=True)      # SET_VRING_ENABLE after the rings, like DPDK
    pair = TrafficPair(a, b, rate=3000).start()
    pool = Pool()
    first_fuzz_port = max(row_a["port"], row_b["port"]) + 1
    sessions, max_wait, lingering = [], 0.0, Lingering()
    t0 = time.monotonic()
    try:
        while within(budget, len(sessions), t0):
            while len(switch.worker_pids()) > 2 + 6:         # let the machine breathe
                lingering.poll()
                time.sleep(0.01)
            n = len(sessions)
            rng = random.Random("%d:%d" % (base, n))
            session = generate(rng, pool)
            sessions.append(session)
            label = "seed %d session %d: %s" % (base, n, session.describe())
            max_wait = max(max_wait, run_remote(switch.socket, session, pool, rng, lingering, label))
            lingering.poll()
            assert switch.proc.poll() is None, "master died during " + label
        lingering.wait()
        elapsed = time.monotonic() - t0
        print("\nswitch fuzz: seed %d, %d sessions in %.1f s (%.1f sessions/s), longest wait to connect %.2f s"
              % (base, len(sessions), elapsed, len(sessions) / elapsed, max_wait))

        assert not lingering.hung, "workers still talking %.0f s after the session ended: %s" % (
            lingering.patience, lingering.hung[:5])
        # The master is alive and still accepts.
        assert switch.proc.poll() is None
        probe = VhostClient(switch.socket)
        assert probe.get_features() == B.FEATURES
        probe.close()
        # No worker of a finished session lingers.
        pair_workers = {row_a["worker_pid"], row_b["worker_pid"]}
        deadline = time.monotonic() + 30
        while set(switch.worker_pids()) != pair_workers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(switch.worker_pids()) == pair_workers, "lingering workers"
        # The pair lost nothing and its counters agree with what it saw.
        stats = pair.stop()
        rows = {r["port"]: r for r in switch.ports()}
        assert set(rows) == {row_a["port"], row_b["port"]}
        print("traffic pair during the fuzz: %s" % stats)
        assert stats["error"] is None and stats["lost"] == [0, 0], stats
        assert stats["duplicates"] == [0, 0] and stats["damaged"] == [0, 0], stats
        assert min(stats["received"]) > 1000, stats
        for k, row in enumerate((rows[row_a["port"]], rows[row_b["port"]])):
            assert row["state"] == "active", row
            assert (row["rx_frames"], row["tx_frames"]) == (stats["tx_frames"][k], stats["delivered"][k]), row
            assert row["drops"] == 0, row
        # No /dev/shm segment of a finished port remains.
        ids = (row_a["port"], row_b["port"])
        expect = {names.port_block(switch.instance, i).lstrip("/") for i in ids}
        expect |= {names.ring(switch.instance, i, j).lstrip("/") for i in ids for j in ids if i != j}
        assert set(switch.shm_segments()) == expect
        # Every fuzz worker ended on its own terms: no traceback, exit status 0.
        log = switch.log()
        bad = [(int(m.group(1)), m.group(2)) for m in re.finditer(r"port (\d+) detached \([^)]*worker ([^)]*)\)", log)
               if m.group(2) != "exit 0"]
        detail = ["port %d (%s): seed %d session %d: %s" % (p, st, base, p - first_fuzz_port,
                                                             sessions[p - first_fuzz_port].describe())
                  for p, st in bad[:8] if 0 <= p - first_fuzz_port < len(sessions)]
        exceptions = collections.Counter(re.findall(r"\n(\w+(?:Error|Exception)\b[^\n]*)\n", log))
        assert not bad and "Traceback" not in log, (
            "%d of %d fuzz workers died badly; uncaught exceptions in workers: %s; e.g.\n%s"
            % (len(bad), len(sessions), dict(exceptions), "\n".join(detail)))
    finally:
        pair.stop(drain_timeout=0)
        pool.close()
        a.close()
        b.close()


# -- (b) the back-end in process ----------------------------------------------------------

class Harness:
    """One Backend on a socketpair, the way port_worker drives it."""

    def __init__(self):
        self.fe, self.be = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.be.settimeout(0.05)           # a torn message ends the session, never hangs it
        self.fe.setblocking(False)
        self.port = ffi.new("struct sv3_port *")
        self.ctr = ffi.new("struct sv3_counters *")
        self.port.ctr, self.port.batch, self.port.hdr_len = self.ctr, 32, 12
        self.backend = B.Backend(self.be, self.port, "fuzz")
        self.stream = b""                  # bytes sent that no whole message took yet

    def close(self):
        self.backend.close()
        self.fe.close()
        self.be.close()


def complete_message(stream):
    """Does the stream start with a message recv_message can read in full
    (or reject from its header alone)?  -> bytes it takes, or 0."""
    if len(stream) < HEADER.size:
        return 0
    _, flags, size = HEADER.unpack_from(stream)
    if flags & 3 != VERSION or size > 4096:
        return HEADER.size
    return HEADER.size + size if len(stream) >= HEADER.size + size else 0


def replies(sock):
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def check_port(h):
    """Every started vring lies inside mapped guest memory, whole."""
    p, out = h.port, []
    spans = [(r.host, r.host + r.size) for r in h.backend.regions]
    for i in range(2):
        vr = p.vr[i]
        if not vr.started:
            continue
        n = vr.num
        if not n or n & (n - 1):
            out.append("vring %d started with size %d" % (i, n))
            continue
        for name, addr, length in (("desc", vr.desc, 16 * n), ("avail", vr.avail, 6 + 2 * n),
                                   ("used", vr.used, 6 + 8 * n)):
            if not any(lo <= addr and addr + length <= hi for lo, hi in spans):
                out.append("vring %d started with %s 0x%x+%d outside guest memory" % (i, name, addr, length))
    return out


def run_local(session, pool, rng, problems):
    """Play one session into an in-process Backend.  Appends what went
    wrong to problems (a list of strings)."""
    h = Harness()
    try:
        for act in session.actions:
            if isinstance(act, Op):
                if act.kind != "read":
                    ring_op(act.kind, rng, pool)
                continue
            data = act.wire()
            try:
                if act.fds:
                    socket.send_fds(h.fe, [data], [pool.get(k) for k in act.fds][:250])
                else:
                    h.fe.send(data)
            except BlockingIOError:
                break                                      # socket full: the rest is lost, like a cut
            h.stream += data
            while session.abrupt != "late" and complete_message(h.stream):   # whole messages so far
                h.stream = h.stream[complete_message(h.stream):]
                step(h, rng, pool, session, problems)
        if session.abrupt:
            h.fe.close()
        else:
            h.fe.shutdown(socket.SHUT_WR)                  # replies can still be read
        while True:                                        # the rest, up to EOF
            step(h, rng, pool, session, problems)
    except (ConnectionClosed, ProtocolError):
        pass
    finally:
        h.close()


def step(h, rng, pool, session, problems):
    msg = recv_message(h.be)                               # ConnectionClosed / ProtocolError end it
    h.backend.handle(msg)
    if not session.abrupt:
        check_replies(h, msg, problems)
    problems += check_port(h)
    exercise_core(h, rng, pool)


def check_replies(h, msg, problems):
    """Reference section 2: every GET_* and, with REPLY_ACK, every
    need_reply message gets exactly one reply: flags 0x5, same request, 8 bytes."""
    want = 1 if msg.request in GET_REQUESTS or (msg.need_reply and h.backend.protocol_features & REPLY_ACK) else 0
    data = replies(h.fe)
    got = []
    while len(data) >= HEADER.size:
        req, flags, size = HEADER.unpack_from(data)
        got.append((req, flags, size))
        data = data[HEADER.size + size:]
    if len(got) != want or data or any(g != (msg.request, VERSION | FLAG_REPLY, 8) for g in got):
        problems.append("%s (flags 0x%x, %d bytes, %d fds): replies %s, want %d of (%d, 0x5, 8)"
                        % (msg.name, msg.flags, len(msg.payload), len(msg.fds), got, want, msg.request))


def exercise_core(h, rng, pool):
    """Whatever the back-end left started, the C core must survive it."""
    p = h.port
    if p.vr[0].started or p.vr[1].started:
        if rng.random() < 0.2:
            scribble(rng, pool)
        lib.sv3_port_run(p, 2)
        if not lib.sv3_port_arm(p):
            lib.sv3_port_disarm(p)
        p.nlearn = 0


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def fuzz_mappings():
    with open("/proc/self/maps") as f:
        return sum("sv3fuzz" in line for line in f)


def where(e):
    tb = e.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    return "%s:%d" % (os.path.relpath(tb.tb_frame.f_code.co_filename), tb.tb_lineno)


def test_backend_in_process_fuzz():
    budget, base = local_budget(), seed()
    pool = Pool()
    logging.getLogger("sv3.vhost").disabled = True        # one warning per bad message otherwise
    fds0, maps0 = fd_count(), fuzz_mappings()
    crashes, problems, leaks = {}, {}, []
    n, t0 = 0, time.monotonic()
    try:
        while within(budget, n, t0):
            rng = random.Random("%d:%d" % (base, n))
            session = generate(rng, pool)
            found = []
            try:
                run_local(session, pool, rng, found)
            except Exception as e:                          # anything but the two documented ones
                key = "%s: %s at %s" % (type(e).__name__, re.sub(r"0x[0-9a-f]+", "0x…", str(e)), where(e))
                crashes.setdefault(key, []).append(n)
            for p in found:
                problems.setdefault(re.sub(r"0x[0-9a-f]+", "0x…", p), []).append(n)
            if fd_count() != fds0 and not leaks:
                leaks.append("fds: %d before, %d after seed %d session %d (%s)"
                             % (fds0, fd_count(), base, n, session.describe()))
            n += 1
            if n % 500 == 0 and fuzz_mappings() != maps0:
                leaks.append("mappings of guest memory: %d before, %d after session %d" % (maps0, fuzz_mappings(), n))
                break
        elapsed = time.monotonic() - t0
        print("\nback-end fuzz: seed %d, %d sessions in %.1f s (%.0f sessions/s)" % (base, n, elapsed, n / elapsed))
        if fuzz_mappings() != maps0:
            leaks.append("mappings of guest memory: %d before, %d at the end" % (maps0, fuzz_mappings()))
        if fd_count() != fds0:
            leaks.append("fds: %d before, %d at the end" % (fds0, fd_count()))
    finally:
        logging.getLogger("sv3.vhost").disabled = False
        pool.close()

    def show(title, d):
        return [title] + ["  %s  [%d sessions, first: seed %d session %d]" % (k, len(v), base, v[0])
                          for k, v in sorted(d.items(), key=lambda kv: -len(kv[1]))]
    report = (show("unexpected exceptions out of Backend:", crashes) if crashes else []) \
        + (show("protocol or state violations:", problems) if problems else []) + leaks
    assert n > 0
    assert not report, "\n".join(report)
