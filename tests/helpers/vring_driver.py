"""The guest's (driver's) half of split virtqueues, over fake guest memory,
for tests of the C core (sv3/_native/port.c, vring.c).

    mem = GuestMemory(1 << 22)
    a, b = make_port(1), make_port(2)
    connect(a, b)
    mem.install(a.p); mem.install(b.p)
    atx = Driver(mem, a, 1, 256)          # guest TX of port A
    brx = Driver(mem, b, 0, 256)          # guest RX of port B
    brx.add_rx([1500] * 4)
    atx.add_tx(frame)
    a.run(); b.run()
    [(head, length)] = brx.used()
    data = brx.read_rx((head, length))    # virtio-net header + frame

Guest physical addresses (GPA) start at gpa_base and deliberately differ from
both the local address of the buffer and the fake front-end address (QVA),
so a core that confuses them reads outside memory and is caught.  Layout per
virtio 1.1 section 2.6 (see /work/shared/reference/vhost-user.md section 9);
all fields little endian.
"""
import struct
import uuid

from sv3._native import ffi, lib
from sv3.shm import ring

NEXT, WRITE, INDIRECT = 1, 2, 4
NO_INTERRUPT = 1        # avail->flags
NO_NOTIFY = 1           # used->flags
DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")
FAKE_QVA = 0x7f5500000000


class GuestMemory:
    """One region of guest RAM backed by an ffi buffer, with a bump allocator."""

    def __init__(self, size=1 << 22, gpa_base=0x40000000):
        self.size, self.gpa_base = size, gpa_base
        self.buf = ffi.new("uint8_t[]", size)          # kept alive by self
        self.view = memoryview(ffi.buffer(self.buf))
        self.host_base = int(ffi.cast("uintptr_t", self.buf))
        self.qva_base = FAKE_QVA
        assert self.host_base != gpa_base
        self.next = gpa_base

    @property
    def end(self):
        return self.gpa_base + self.size

    def host(self, gpa):
        """Local address of gpa (an int)."""
        return self.host_base + self.off(gpa)

    def off(self, gpa):
        assert self.gpa_base <= gpa < self.end, hex(gpa)
        return gpa - self.gpa_base

    def alloc(self, n, align=16):
        gpa = (self.next + align - 1) & ~(align - 1)
        if gpa + n > self.end:
            raise MemoryError("guest memory exhausted")
        self.next = gpa + n
        return gpa

    def read(self, gpa, n):
        o = self.off(gpa)
        return bytes(self.view[o:o + n])

    def write(self, gpa, data):
        o = self.off(gpa)
        self.view[o:o + len(data)] = data

    def u16(self, gpa, value=None):
        if value is None:
            return struct.unpack_from("<H", self.view, self.off(gpa))[0]
        struct.pack_into("<H", self.view, self.off(gpa), value & 0xffff)

    def install(self, port):
        """Give a struct sv3_port this memory as its one region."""
        p = getattr(port, "p", port)
        p.nregions = 1
        r = p.regions[0]
        r.gpa, r.size, r.qva, r.host = self.gpa_base, self.size, self.qva_base, self.host_base


class Port:
    """A struct sv3_port and the memory it points at, kept alive together."""

    def __init__(self, port_id, hdr_len=12, mrg=True, indirect=False, event_idx=False):
        self.port_id = port_id
        self.p = ffi.new("struct sv3_port *")
        self.ctr = ffi.new("struct sv3_counters *")
        self.segs = []
        p = self.p
        p.port_id, p.hdr_len, p.ctr = port_id, hdr_len, self.ctr
        p.mrg_rxbuf, p.indirect, p.event_idx = int(mrg), int(indirect), int(event_idx)
        p.batch = lib.SV3_MAX_BATCH
        for vr in p.vr:
            vr.kick_fd = vr.call_fd = -1

    def run(self, breaths=1):
        return lib.sv3_port_run(self.p, breaths)

    def arm(self):
        return lib.sv3_port_arm(self.p)


def make_port(port_id, hdr_len=12, mrg=True, indirect=False, event_idx=False):
    return Port(port_id, hdr_len, mrg, indirect, event_idx)


def _ring(data_bytes):
    seg = ring.create("/sv3test.%s" % uuid.uuid4().hex[:12], data_bytes)
    seg.unlink()                       # the mapping stays; nothing left behind
    return seg


def connect(a, b, data_bytes=1 << 18):
    """Two rings, a->b and b->a, attached as both ports' peers."""
    for src, dst in ((a, b), (b, a)):
        seg = _ring(data_bytes)
        src.segs.append(seg)
        dst.segs.append(seg)
        r = seg.cast("struct sv3_ring *")
        i, j = src.p.npeers, dst.p.nin
        lib.sv3_ring_prod_attach(ffi.addressof(src.p.out[i]), r, -1, dst.port_id)
        lib.sv3_ring_cons_attach(ffi.addressof(dst.p.inb[j]), r)
        src.p.npeers, dst.p.nin = i + 1, j + 1


class Driver:
    """One split virtqueue, driver side.  Descriptor indices come from a free
    list and return to it when used() reports their chain."""

    def __init__(self, mem, port, index, num, event_idx=False, start_idx=0, start=True):
        self.mem, self.port, self.index, self.num = mem, port, index, num
        self.p = getattr(port, "p", port)
        self.event_idx = event_idx
        self.desc = mem.alloc(16 * num, 16)
        self.avail = mem.alloc(6 + 2 * num, 2)
        self.used_gpa = mem.alloc(6 + 8 * num, 4)
        self.free = list(range(num))
        self.chains = {}                 # head -> [(gpa, len), ...] of its buffers
        self.retired = {}                # the same, for chains used() reported
        self.avail_idx = self.last_used = start_idx & 0xffff
        self.mem.u16(self.avail + 2, self.avail_idx)
        self.mem.u16(self.used_gpa + 2, self.last_used)
        vr = self.vr = self.p.vr[index]
        vr.desc, vr.avail, vr.used = mem.host(self.desc), mem.host(self.avail), mem.host(self.used_gpa)
        vr.num, vr.last_avail_idx, vr.enabled = num, self.avail_idx, 1
        if start:
            assert lib.sv3_vring_start(self.p, index) == 0

    # -- raw access, for hostile cases -------------------------------------
    def set_desc(self, i, addr, length, flags=0, next=0):
        DESC.pack_into(self.mem.view, self.mem.off(self.desc) + 16 * i, addr, length, flags, next)

    def get_desc(self, i):
        return DESC.unpack_from(self.mem.view, self.mem.off(self.desc) + 16 * i)

    def post(self, head):
        """Put head in the avail ring and publish it."""
        self.mem.u16(self.avail + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xffff
        self.mem.u16(self.avail + 2, self.avail_idx)

    def add_raw(self, descs, head=None):
        """descs: [(index, addr, len, flags, next)]; posts head (default the
        first index).  Nothing is tracked: used() reports it with no data."""
        for d in descs:
            self.set_desc(*d)
        self.post(descs[0][0] if head is None else head)

    def set_avail_idx(self, value):
        self.avail_idx = value & 0xffff
        self.mem.u16(self.avail + 2, self.avail_idx)

    @property
    def avail_flags(self):
        return self.mem.u16(self.avail)

    @avail_flags.setter
    def avail_flags(self, value):
        self.mem.u16(self.avail, value)

    @property
    def used_event(self):
        return self.mem.u16(self.avail + 4 + 2 * self.num)

    @used_event.setter
    def used_event(self, value):
        self.mem.u16(self.avail + 4 + 2 * self.num, value)

    @property
    def used_flags(self):
        return self.mem.u16(self.used_gpa)

    @property
    def used_idx(self):
        return self.mem.u16(self.used_gpa + 2)

    @property
    def avail_event(self):
        return self.mem.u16(self.used_gpa + 4 + 8 * self.num)

    # -- chains ------------------------------------------------------------
    def _chain(self, bufs, flags, indirect=False):
        """bufs: [(gpa, len)].  Writes descriptors, returns the head."""
        if indirect:
            table = self.mem.alloc(16 * len(bufs), 16)
            for k, (gpa, n) in enumerate(bufs):
                last = k == len(bufs) - 1
                self.mem.write(table + 16 * k, DESC.pack(gpa, n, flags | (0 if last else NEXT), k + 1 if not last else 0))
            head = self.free.pop(0)
            self.set_desc(head, table, 16 * len(bufs), INDIRECT)
        else:
            if len(bufs) > len(self.free):
                raise RuntimeError("no free descriptors")
            idx = [self.free.pop(0) for _ in bufs]
            for k, (gpa, n) in enumerate(bufs):
                last = k == len(bufs) - 1
                self.set_desc(idx[k], gpa, n, flags | (0 if last else NEXT), 0 if last else idx[k + 1])
            head = idx[0]
        self.chains[head] = list(bufs)
        self.post(head)
        return head

    def add_tx(self, frame, hdr=b"\0" * 12, split=None, indirect=False):
        """A readable chain holding hdr + frame.  split: byte counts of the
        descriptors in order (any remainder becomes one more descriptor)."""
        data = hdr + frame
        sizes = list(split or [len(data)])
        if sum(sizes) < len(data):
            sizes.append(len(data) - sum(sizes))
        bufs, off = [], 0
        for n in sizes:
            gpa = self.mem.alloc(max(n, 1))
            self.mem.write(gpa, data[off:off + n])
            bufs.append((gpa, n))
            off += n
        return self._chain(bufs, 0, indirect)

    def add_rx(self, sizes, indirect=False):
        """Writable chains, one per entry of sizes; an entry that is a list
        makes one chain of several descriptors.  Returns the heads."""
        heads = []
        for s in sizes:
            parts = s if isinstance(s, (list, tuple)) else [s]
            bufs = [(self.mem.alloc(max(n, 1)), n) for n in parts]
            for gpa, n in bufs:
                self.mem.write(gpa, b"\xee" * n)          # poison: stale bytes show
            heads.append(self._chain(bufs, WRITE, indirect))
        return heads

    def used(self):
        """New used entries (id, len) since the last call; their chains'
        descriptors go back to the free list."""
        out = []
        new = self.used_idx
        while self.last_used != new:
            slot = self.mem.off(self.used_gpa) + 4 + 8 * (self.last_used % self.num)
            out.append(USED_ELEM.unpack_from(self.mem.view, slot))
            self.last_used = (self.last_used + 1) & 0xffff
        for head, _ in out:
            bufs = self.chains.pop(head, None)
            if bufs is not None:
                self.retired[head] = bufs
                self._free(head, len(bufs))
        return out

    def _free(self, head, n):
        flags = self.get_desc(head)[2]
        if flags & INDIRECT:
            self.free.append(head)
            return
        i = head
        for _ in range(n):
            _, _, flags, nxt = self.get_desc(i)
            self.free.append(i)
            i = nxt

    def read_rx(self, entry):
        """The bytes the device wrote into the chain of a used entry."""
        head, length = entry
        out = b""
        for gpa, n in self.retired[head]:
            take = min(n, length - len(out))
            out += self.mem.read(gpa, take)
        return out
