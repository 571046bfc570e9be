"""A test-only vhost-user front-end: QEMU's half of a port, in Python.

It owns real guest memory (a sealed memfd mapped in this process and sent
with SET_MEM_TABLE), speaks any message sequence to the switch, writes
descriptor chains straight into that memory, kicks through its kick
eventfds and reads the switch's call and err eventfds.  Two of them on one
switch move frames from A's TX vring to B's RX vring through the real
switch processes:

    a, b = Frontend(sw.socket), Frontend(sw.socket)
    a.attach(); b.attach()                      # QEMU 7.2 order, REPLY_ACK on
    b.post_rx(); a.send_frames([frame(MAC_B, MAC_A, b"hi")])
    [f] = b.recv_frames(count=1)

Guest memory (GuestMemory): one or two regions of one memfd, at different
file offsets with a gap between them, adjacent in guest-physical space
(GPA) and far apart in the front-end's address space (QVA).  GPA, QVA and
this process's own address of a byte all differ, so a back-end that mixes
up the two translations, or assumes mmap_offset 0 or one region, reads the
wrong bytes.  Vring layout and free-list ideas follow
tests/helpers/vring_driver.py (virtio 1.1 section 2.6); every index the
switch reads concurrently is written with one 16-bit store (cffi), never
byte by byte (struct.pack_into), so the switch never sees a torn index.

Raw access for hostile tests: Frontend.send() sends any header, payload,
flags and fds; Vring.set_desc()/post()/set_avail_idx() write anything.

TrafficPair: two attached front-ends exchanging numbered frames both ways
from a background thread, counting what was sent, received, lost, damaged
or duplicated, and what arrived from elsewhere (strays).
"""
import collections
import fcntl
import mmap
import os
import select
import struct
import threading
import time

from sv3._native import ffi
from tests.helpers.vhost_client import VhostClient

# -- wire format (/work/shared/reference/vhost-user.md sections 2-3) --------
HEADER = struct.Struct("<III")           # request, flags, size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")    # index, flags, desc, used, avail, log
MEM_TABLE_HEAD = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")      # gpa, size, qva, mmap_offset

VERSION, FLAG_REPLY, FLAG_NEED_REPLY = 0x1, 0x4, 0x8
VRING_NOFD = 0x100

GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18

F_MRG_RXBUF, F_INDIRECT_DESC, F_EVENT_IDX, F_PROTOCOL_FEATURES, F_VERSION_1 = 15, 28, 29, 30, 32
PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK = 0, 3
DEFAULT_FEATURES = (1 << F_VERSION_1) | (1 << F_MRG_RXBUF) | (1 << F_INDIRECT_DESC) | (1 << F_PROTOCOL_FEATURES)
DEFAULT_PROTOCOL_FEATURES = (1 << PROTOCOL_F_MQ) | (1 << PROTOCOL_F_REPLY_ACK)

# -- split virtqueue (virtio 1.1 section 2.6) ------------------------------
NEXT, WRITE, INDIRECT = 1, 2, 4
DESC = struct.Struct("<QIHH")            # addr, len, flags, next
USED_ELEM = struct.Struct("<II")         # id, len
NET_HDR_LEN = 12                         # VERSION_1: num_buffers included

GPA_BASE = 0x100000                      # below it: a hole no region covers
QVA_BASES = (0x7f1000000000, 0x7f2000000000)
FILE_GAP = 0x10000                       # unused memfd bytes between regions
BOUNDARY_RESERVE = 0x1000                # kept free on both sides of the region boundary


class Region:
    __slots__ = ("gpa", "size", "qva", "offset")

    def __init__(self, gpa, size, qva, offset):
        self.gpa, self.size, self.qva, self.offset = gpa, size, qva, offset

    @property
    def end(self):
        return self.gpa + self.size

    def pack(self):
        return MEM_REGION.pack(self.gpa, self.size, self.qva, self.offset)


class GuestMemory:
    """Guest RAM: `nregions` regions of `region_size` bytes in one sealed
    memfd, mapped here; a bump allocator per region."""

    def __init__(self, region_size=2 << 20, nregions=2, name="sv3fake"):
        assert nregions in (1, 2)
        self.regions, gpa, off = [], GPA_BASE, 0
        for i in range(nregions):
            self.regions.append(Region(gpa, region_size, QVA_BASES[i], off))
            gpa, off = gpa + region_size, off + region_size + FILE_GAP
        self.file_size = off - FILE_GAP
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, self.file_size)
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)  # QEMU seal=on
        self.mm = mmap.mmap(self.fd, self.file_size)
        self._c = ffi.from_buffer("uint8_t[]", self.mm)
        self.base = int(ffi.cast("uintptr_t", self._c))
        self.next = [r.gpa + (BOUNDARY_RESERVE if i else 0) for i, r in enumerate(self.regions)]

    # -- addresses -----------------------------------------------------------
    @property
    def start(self):
        return self.regions[0].gpa

    @property
    def end(self):
        return self.regions[-1].end

    def region_of(self, gpa):
        for r in self.regions:
            if r.gpa <= gpa < r.end:
                return r
        return None

    def off(self, gpa):
        """Offset in the memfd (and in self.mm) of one guest byte."""
        r = self.region_of(gpa)
        assert r is not None, "GPA 0x%x is outside guest memory" % gpa
        return r.offset + gpa - r.gpa

    def qva(self, gpa):
        r = self.region_of(gpa)
        assert r is not None, hex(gpa)
        return r.qva + gpa - r.gpa

    def boundary(self):
        """GPA where region 0 ends and region 1 begins (two regions only)."""
        assert len(self.regions) == 2
        return self.regions[0].end

    def alloc(self, n, align=16, region=0):
        r = self.regions[region]
        limit = r.end - (BOUNDARY_RESERVE if region == 0 and len(self.regions) > 1 else 0)
        gpa = (self.next[region] + align - 1) & ~(align - 1)
        if gpa + n > limit:
            raise MemoryError("guest memory region %d exhausted" % region)
        self.next[region] = gpa + n
        return gpa

    # -- access (ranges may cross from one region into the next) ------------
    def _pieces(self, gpa, n):
        while n:
            r = self.region_of(gpa)
            assert r is not None, "GPA 0x%x is outside guest memory" % gpa
            k = min(n, r.end - gpa)
            yield r.offset + gpa - r.gpa, k
            gpa, n = gpa + k, n - k

    def read(self, gpa, n):
        return b"".join(self.mm[o:o + k] for o, k in self._pieces(gpa, n))

    def write(self, gpa, data):
        data = memoryview(bytes(data))
        for o, k in self._pieces(gpa, len(data)):
            self.mm[o:o + k] = data[:k]
            data = data[k:]

    def u16(self, gpa):
        return ffi.cast("uint16_t *", self.base + self.off(gpa))[0]

    def set_u16(self, gpa, value):
        """One 16-bit store: the switch reads these fields concurrently."""
        ffi.cast("uint16_t *", self.base + self.off(gpa))[0] = value & 0xFFFF

    # -- SET_MEM_TABLE -------------------------------------------------------
    def table(self):
        return MEM_TABLE_HEAD.pack(len(self.regions), 0) + b"".join(r.pack() for r in self.regions)

    def table_fds(self):
        return [self.fd] * len(self.regions)

    def close(self):
        if self.mm is not None:
            ffi.release(self._c)
            self.mm.close()
            os.close(self.fd)
            self.mm = None


class Vring:
    """One split virtqueue, driver side, in GuestMemory.  Every descriptor id
    owns a buffer of buf_size bytes (regions alternate by id), so a long
    traffic run never exhausts memory; hostile tests write raw descriptors."""

    def __init__(self, mem, index, num=256, buf_size=2048):
        self.mem, self.index, self.num, self.buf_size = mem, index, num, buf_size
        nreg = len(mem.regions)
        self.desc = mem.alloc(16 * num, 4096, region=index % nreg)
        self.avail = mem.alloc(6 + 2 * num, 4096, region=index % nreg)
        self.used_gpa = mem.alloc(6 + 8 * num, 4096, region=(index + 1) % nreg)
        self.bufs = [mem.alloc(buf_size, 64, region=i % nreg) for i in range(num)]
        self.reinit()

    def reinit(self, start_idx=0):
        """A fresh ring, as a driver sets it up after a device reset."""
        self.mem.write(self.desc, bytes(16 * self.num))
        self.mem.write(self.avail, bytes(6 + 2 * self.num))
        self.mem.write(self.used_gpa, bytes(6 + 8 * self.num))
        self.free = collections.deque(range(self.num))
        self.chains = {}                 # head -> descriptor ids, for chains in flight
        self.avail_idx = self.last_used = start_idx & 0xFFFF
        self.mem.set_u16(self.avail + 2, self.avail_idx)
        self.mem.set_u16(self.used_gpa + 2, self.last_used)

    def addr_payload(self, flags=0):
        """SET_VRING_ADDR payload: the rings' QVAs (used before avail)."""
        m = self.mem
        return VRING_ADDR.pack(self.index, flags, m.qva(self.desc), m.qva(self.used_gpa), m.qva(self.avail), 0)

    # -- raw access, for hostile cases ----------------------------------------
    def set_desc(self, i, addr, length, flags=0, next=0):
        self.mem.write(self.desc + 16 * i, DESC.pack(addr & (2**64 - 1), length & 0xFFFFFFFF, flags, next & 0xFFFF))

    def post(self, head):
        """Put head in the avail ring and publish it (entry first, then idx)."""
        self.mem.set_u16(self.avail + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.set_u16(self.avail + 2, self.avail_idx)

    def set_avail_idx(self, value):
        self.avail_idx = value & 0xFFFF
        self.mem.set_u16(self.avail + 2, self.avail_idx)

    @property
    def used_idx(self):
        return self.mem.u16(self.used_gpa + 2)

    @property
    def used_flags(self):
        return self.mem.u16(self.used_gpa)

    # -- chains ----------------------------------------------------------------
    def _chain(self, pieces, flags):
        """pieces: byte strings (TX) or lengths (RX), one descriptor each,
        written into the ids' own buffers.  Returns the head."""
        if len(pieces) > len(self.free):
            raise RuntimeError("vring %d: no free descriptors" % self.index)
        ids = [self.free.popleft() for _ in pieces]
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            if isinstance(piece, int):
                length = piece
            else:
                length = len(piece)
                self.mem.write(self.bufs[ids[k]], piece)
            assert length <= self.buf_size
            self.set_desc(ids[k], self.bufs[ids[k]], length, flags | (0 if last else NEXT), 0 if last else ids[k + 1])
        self.chains[ids[0]] = ids
        self.post(ids[0])
        return ids[0]

    def add_tx(self, frame, hdr=bytes(NET_HDR_LEN), split=None):
        """A readable chain holding hdr + frame; split: descriptor sizes."""
        data, pieces, off = hdr + frame, [], 0
        for n in split or []:
            pieces.append(data[off:off + n])
            off += n
        while off < len(data):
            pieces.append(data[off:off + self.buf_size])
            off += self.buf_size
        return self._chain(pieces, 0)

    def add_rx(self, count=1, size=None):
        """count writable one-descriptor chains of size bytes."""
        return [self._chain([size or self.buf_size], WRITE) for _ in range(min(count, len(self.free)))]

    def used(self):
        """New used entries [(id, len)]; their descriptors become free again."""
        out, new = [], self.used_idx
        while self.last_used != new:
            slot = self.used_gpa + 4 + 8 * (self.last_used % self.num)
            out.append(USED_ELEM.unpack(self.mem.read(slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        for head, _ in out:
            self.free.extend(self.chains.pop(head, ()))
        return out

    def read_chain(self, head_ids, length):
        """Bytes the device wrote into the buffers of one chain."""
        out = b""
        for i in head_ids:
            out += self.mem.read(self.bufs[i], min(self.buf_size, length - len(out)))
        return out


def attach_port(switch, enable_last=False, **opts):
    """A Frontend (opts: its arguments) attached to switch
    (tests/helpers/switch.py) as its newest port: returns (frontend, its
    sv3.ctl row once active).  Connect one at a time: the port is told apart
    by its id, the highest."""
    before = {p["port"] for p in switch.ports(include_gone=True)}
    fe = Frontend(switch.socket, **opts)
    fe.attach(enable_last=enable_last)
    rows = switch.wait_ports(lambda ps: any(p["port"] not in before and p["state"] == "active" for p in ps),
                             10, "the new port to be active")
    return fe, max((p for p in rows if p["port"] not in before), key=lambda p: p["port"])


class ReplyError(AssertionError):
    pass


class Frontend(VhostClient):
    """One vhost-user connection to the switch, with its guest memory, two
    vrings (0 = guest RX, 1 = guest TX) and kick/call/err eventfds."""

    def __init__(self, path, mem=None, num=256, features=DEFAULT_FEATURES,
                 protocol_features=DEFAULT_PROTOCOL_FEATURES, timeout=5.0, nregions=2):
        self.path = path
        # room for both vrings' buffers (2 KiB per descriptor) and the rings
        self.mem = mem or GuestMemory(region_size=max(2 << 20, num * 4096 // nregions + (1 << 20)),
                                      nregions=nregions)
        self.vrings = [Vring(self.mem, 0, num), Vring(self.mem, 1, num)]
        self.want_features, self.want_protocol = features, protocol_features
        self.features = self.protocol_features = 0
        self.kick = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
        self.call = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
        self.err = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
        super().__init__(path, timeout)

    @property
    def rx(self):
        return self.vrings[0]

    @property
    def tx(self):
        return self.vrings[1]

    # -- raw messages: send(), send_bytes(), recv_reply() come from VhostClient --
    def request(self, request, payload=b""):
        """A message with a reply (GET_*): returns the checked reply payload."""
        self.send(request, payload)
        return self.request_reply(request)

    def set(self, request, payload=b"", fds=(), need_reply=False):
        """A message without a reply; with need_reply (REPLY_ACK negotiated)
        returns the back-end's u64 ack (0 = success)."""
        acks = need_reply and self.protocol_features & (1 << PROTOCOL_F_REPLY_ACK)
        self.send(request, payload, VERSION | (FLAG_NEED_REPLY if acks else 0), fds)
        if acks:
            return U64.unpack(self.request_reply(request))[0]
        return None

    def request_reply(self, request):
        """The reply to request: flags exactly 0x5, same request, 8 bytes."""
        req, flags, reply = self.recv_reply()
        if (req, flags, len(reply)) != (request, VERSION | FLAG_REPLY, 8):
            raise ReplyError("reply to %d: request %d flags 0x%x size %d" % (request, req, flags, len(reply)))
        return reply

    def get_u64(self, request):
        return U64.unpack(self.request(request))[0]

    # -- QEMU 7.2 handshake (reference section 3, "What QEMU 7.2 sends") --------
    def init(self):
        """Connect-time messages: features, protocol features, owner, the
        QEMU-internal call fds and err fds, and SET_VRING_ENABLE."""
        offered = self.get_u64(GET_FEATURES)
        self.protocol_features = 0
        if offered & (1 << F_PROTOCOL_FEATURES):
            proto = self.get_u64(GET_PROTOCOL_FEATURES) & self.want_protocol
            self.set(SET_PROTOCOL_FEATURES, U64.pack(proto))
            self.protocol_features = proto
            if proto & (1 << PROTOCOL_F_MQ):
                assert self.get_u64(GET_QUEUE_NUM) >= 1
        self.set(SET_OWNER)
        self.get_u64(GET_FEATURES)
        for i in range(2):
            temp = os.eventfd(0, os.EFD_CLOEXEC)      # QEMU's own fd, replaced at start
            self.set(SET_VRING_CALL, U64.pack(i), [temp])
            os.close(temp)
            self.set(SET_VRING_ERR, U64.pack(i), [self.err[i]])
        self.features = offered & self.want_features
        if self.features & (1 << F_PROTOCOL_FEATURES):
            for i in range(2):
                self.set(SET_VRING_ENABLE, VRING_STATE.pack(i, 1))
        return offered

    def start(self, enable_last=False):
        """DRIVER_OK: SET_FEATURES, SET_MEM_TABLE (need_reply), then per vring
        NUM, BASE, ADDR, KICK, CALL.  SET_VRING_ENABLE comes first, as QEMU
        sends it, or last (enable_last), as other front-ends do.  Ends with
        GET_FEATURES as a barrier, as QEMU does: every vring has started."""
        proto = self.features & (1 << F_PROTOCOL_FEATURES)
        if proto and not enable_last:
            for i in range(2):
                self.set(SET_VRING_ENABLE, VRING_STATE.pack(i, 1))
        self.set(SET_FEATURES, U64.pack(self.features))
        ack = self.set(SET_MEM_TABLE, self.mem.table(), self.mem.table_fds(), need_reply=True)
        assert ack in (None, 0), "SET_MEM_TABLE refused (ack %r)" % ack
        for vr in self.vrings:
            self.set(SET_VRING_NUM, VRING_STATE.pack(vr.index, vr.num))
            self.set(SET_VRING_BASE, VRING_STATE.pack(vr.index, vr.avail_idx))
            self.set(SET_VRING_ADDR, vr.addr_payload())
            self.set(SET_VRING_KICK, U64.pack(vr.index), [self.kick[vr.index]])
            self.set(SET_VRING_CALL, U64.pack(vr.index), [self.call[vr.index]])
        if proto and enable_last:
            for i in range(2):
                self.set(SET_VRING_ENABLE, VRING_STATE.pack(i, 1))
        self.get_u64(GET_FEATURES)

    def attach(self, **start_opts):
        self.init()
        self.start(**start_opts)
        return self

    def stop(self):
        """Device reset: GET_VRING_BASE on both vrings; returns their bases."""
        bases = []
        for i in range(2):
            index, base = VRING_STATE.unpack(self.request(GET_VRING_BASE, VRING_STATE.pack(i, 0)))
            assert index == i
            bases.append(base)
        return bases

    def restart(self):
        """Reset the device the vhost-user way and start again on fresh rings
        (what a guest driver does after it found its device broken)."""
        bases = self.stop()
        for vr in self.vrings:
            vr.reinit()
        for fd in self.call + self.err:
            self._drain(fd)
        self.start()
        return bases

    # -- notifications -----------------------------------------------------------
    def kick_vring(self, i):
        os.eventfd_write(self.kick[i], 1)

    @staticmethod
    def _drain(fd):
        try:
            return os.eventfd_read(fd)
        except BlockingIOError:
            return 0

    def calls(self, i):
        """Interrupts the switch sent on vring i since the last look."""
        return self._drain(self.call[i])

    def errors(self, i):
        """Errors the switch reported on vring i (SET_VRING_ERR fd)."""
        return self._drain(self.err[i])

    def wait_call(self, timeout):
        """Sleep until an interrupt on either vring (or timeout)."""
        select.select(self.call, [], [], timeout)

    # -- frames ------------------------------------------------------------------
    def send_frames(self, frames, kick=True):
        heads = [self.tx.add_tx(f) for f in frames]
        if kick:
            self.kick_vring(1)
        return heads

    def reclaim_tx(self):
        return len(self.tx.used())

    def post_rx(self, count=None):
        """Give every free descriptor (or count of them) to guest RX, kick."""
        heads = self.rx.add_rx(len(self.rx.free) if count is None else count)
        if heads:
            self.kick_vring(0)
        return len(heads)

    def poll_frames(self, repost=True, with_header=False):
        """Frames (virtio-net header stripped, or kept with with_header) in
        new guest RX used entries."""
        entries, frames = self.rx.used(), []
        k = 0
        while k < len(entries):
            head, length = entries[k]
            data = self.rx.read_chain([head], length)
            nbuf = struct.unpack_from("<H", data, 10)[0] if len(data) >= NET_HDR_LEN else 0
            assert nbuf >= 1 and k + nbuf <= len(entries), "bad num_buffers %d" % nbuf
            for h, n in entries[k + 1:k + nbuf]:
                data += self.rx.read_chain([h], n)
            frames.append(data if with_header else data[NET_HDR_LEN:])
            k += nbuf
        if repost and entries:
            self.post_rx()
        return frames

    def recv_frames(self, count, timeout=5.0, with_header=False):
        """Wait for count frames; returns what arrived by the deadline."""
        frames, deadline = [], time.monotonic() + timeout
        while len(frames) < count and time.monotonic() < deadline:
            frames += self.poll_frames(with_header=with_header)
            if len(frames) < count:
                self.wait_call(0.01)
        return frames

    def close(self):
        super().close()
        for fd in self.kick + self.call + self.err:
            os.close(fd)
        self.kick = self.call = self.err = []
        self.mem.close()


# -- frames -----------------------------------------------------------------------
BROADCAST = b"\xff" * 6
ETHERTYPE = b"\x88\xb5"                  # IEEE local experimental
MAGIC = b"SV3P"
_PATTERN = bytes(range(256)) * 8


def mac(n):
    """A locally administered unicast MAC."""
    return bytes([0x02, 0x53, 0x56, 0x33, (n >> 8) & 0xFF, n & 0xFF])


def frame(dst, src, payload=b"", size=60):
    body = dst + src + ETHERTYPE + payload
    return body + bytes(max(0, size - len(body)))


def pair_frame(dst, src, direction, seq):
    """A numbered frame of 60..1514 bytes whose content follows from seq."""
    size = 60 + (seq * 7919 + direction * 131) % 1455
    head = dst + src + ETHERTYPE + MAGIC + struct.pack(">BI", direction, seq)
    return head + _PATTERN[seq % 256:seq % 256 + size - len(head)]


def parse_pair_frame(data):
    """(direction, seq) of a frame pair_frame built intact, else None."""
    if len(data) < 23 or data[12:18] != ETHERTYPE + MAGIC:
        return None
    direction, seq = struct.unpack_from(">BI", data, 18)
    if direction > 1 or data != pair_frame(data[:6], data[6:12], direction, seq):
        return None
    return direction, seq


class TrafficPair:
    """Front-ends a and b (attached) exchange numbered frames both ways, at
    most `window` unanswered per direction (far below every ring and buffer
    limit, so a correct switch loses nothing).  start() first makes sure each
    side hears the other (peers known, MACs learned); stop() stops sending,
    waits for what is in flight and returns the counts."""

    def __init__(self, a, b, mac_a=mac(0xA), mac_b=mac(0xB), window=32, rate=None):
        self.fe = (a, b)
        self.macs = (mac_a, mac_b)
        self.window = window
        self.rate = rate                  # frames per second per direction, None: as fast as it goes
        self.t0 = None
        self.sent = [0, 0]                # direction 0: a -> b, 1: b -> a
        self.got = [set(), set()]
        self.dups = [0, 0]
        self.bad = [0, 0]                 # damaged pair frames
        self.strays = [0, 0]              # frames a / b received from elsewhere
        self.delivered = [0, 0]           # every frame a / b received
        self.tx_frames = [0, 0]           # every frame a / b sent
        self.error = None
        self._stop = threading.Event()
        self._sending = True
        self._thread = None

    def _hello(self, timeout=20.0):
        """Until each side received a frame from the other (not counted)."""
        heard = [False, False]
        deadline = time.monotonic() + timeout
        while not all(heard):
            assert time.monotonic() < deadline, "the pair never heard each other"
            for me in (0, 1):
                if not heard[1 - me]:
                    fe = self.fe[me]
                    fe.reclaim_tx()
                    if fe.tx.free:
                        fe.send_frames([frame(self.macs[1 - me], self.macs[me], b"hello")])
                        self.tx_frames[me] += 1
            for me in (0, 1):
                for f in self.fe[me].poll_frames():
                    self.delivered[me] += 1
                    if f[6:12] == self.macs[1 - me] and f[14:19] == b"hello":
                        heard[me] = True
                    else:
                        self.strays[me] += 1
            time.sleep(0.02)

    def start(self):
        for fe in self.fe:
            fe.post_rx()
        self._hello()
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="traffic-pair", daemon=True)
        self._thread.start()
        return self

    def received(self, direction):
        return len(self.got[direction])

    def wait_progress(self, frames=200, timeout=20.0):
        """Block until both directions delivered `frames` more frames."""
        goal = [len(g) + frames for g in self.got]
        deadline = time.monotonic() + timeout
        while any(len(g) < n for g, n in zip(self.got, goal)):
            if self.error or time.monotonic() > deadline:
                raise AssertionError("traffic pair stalled: %s (error %r)" % (self.summary(), self.error))
            time.sleep(0.02)

    def _step(self, me):
        fe, other = self.fe[me], 1 - me
        moved = fe.reclaim_tx()
        for f in fe.poll_frames():
            moved += 1
            self.delivered[me] += 1
            parsed = parse_pair_frame(f)
            if f[6:12] != self.macs[other] or f[:6] != self.macs[me] or f[14:19] == b"hello":
                self.strays[me] += 1            # from elsewhere, or a late hello
            elif parsed is None or parsed[0] != other:
                self.bad[other] += 1
            elif parsed[1] in self.got[other]:
                self.dups[other] += 1
            else:
                self.got[other].add(parsed[1])
        d = me                                      # frames fe sends: direction me
        batch = []
        budget = len(fe.tx.free)
        if self.rate:
            budget = min(budget, int(self.rate * (time.monotonic() - self.t0)) - self.sent[d])
        while (self._sending and self.sent[d] + len(batch) - len(self.got[d]) < self.window
               and len(batch) < budget):
            batch.append(pair_frame(self.macs[other], self.macs[me], d, self.sent[d] + len(batch)))
        if batch:
            fe.send_frames(batch)
            self.sent[d] += len(batch)
            self.tx_frames[me] += len(batch)
        return moved + len(batch)

    def _run(self):
        try:
            while not self._stop.is_set():
                if not self._step(0) + self._step(1):
                    select.select(self.fe[0].call + self.fe[1].call, [], [], 0.005)
                    for fe in self.fe:
                        for i in range(2):
                            fe.calls(i)
        except Exception as e:          # reported by stop()
            self.error = e

    def lost(self):
        return [self.sent[d] - len(self.got[d]) for d in (0, 1)]

    def stop(self, drain_timeout=10.0):
        """Stop sending, collect in-flight frames, stop the thread; returns
        summary()."""
        self._sending = False
        deadline = time.monotonic() + drain_timeout
        while any(self.lost()) and time.monotonic() < deadline and not self.error:
            time.sleep(0.02)
        time.sleep(0.1)                 # late duplicates would show now
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        time.sleep(0.2)
        self._step(0)                   # stragglers from elsewhere still count as delivered
        self._step(1)
        return self.summary()

    def summary(self):
        return {"sent": list(self.sent), "received": [len(g) for g in self.got], "lost": self.lost(),
                "duplicates": list(self.dups), "damaged": list(self.bad), "strays": list(self.strays),
                "delivered": list(self.delivered), "tx_frames": list(self.tx_frames),
                "error": repr(self.error) if self.error else None}
