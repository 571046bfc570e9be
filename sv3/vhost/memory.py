"""Guest memory: the region table of SET_MEM_TABLE, mapped into this worker.

Each region is checked (sizes, overflow, overlaps, fstat of its fd) before
anything is mapped; any failure rejects the whole table.  Ring addresses
(QVA) are translated here; descriptor buffers (GPA) are translated by the C
core from the same table, copied into struct sv3_port.regions."""
import os
import stat

from .._native import ffi, lib
from . import protocol as P

U64_MAX = (1 << 64) - 1


class MemoryError_(Exception):
    """The table or one of its fds is unusable."""


class Region:
    __slots__ = ("gpa", "size", "qva", "offset", "base", "map_len")

    def __init__(self, gpa, size, qva, offset):
        self.gpa, self.size, self.qva, self.offset = gpa, size, qva, offset
        self.base = None
        self.map_len = 0

    @property
    def host(self):
        return int(ffi.cast("uintptr_t", self.base)) + self.offset


def parse_table(payload):
    """SET_MEM_TABLE payload -> [Region]; raises MemoryError_."""
    if len(payload) < P.MEM_TABLE_HEAD.size:
        raise MemoryError_("memory table shorter than its header")
    n, _ = P.MEM_TABLE_HEAD.unpack_from(payload)
    if not 1 <= n <= P.MAX_REGIONS:
        raise MemoryError_("%d regions (1..%d allowed)" % (n, P.MAX_REGIONS))
    if len(payload) != P.MEM_TABLE_HEAD.size + n * P.MEM_REGION.size:
        raise MemoryError_("memory table of %d bytes for %d regions" % (len(payload), n))
    regions = [Region(*P.MEM_REGION.unpack_from(payload, P.MEM_TABLE_HEAD.size + i * P.MEM_REGION.size))
               for i in range(n)]
    for r in regions:
        if r.size == 0:
            raise MemoryError_("empty region at gpa 0x%x" % r.gpa)
        for start in (r.gpa, r.qva, r.offset):
            if start + r.size > U64_MAX:
                raise MemoryError_("region at gpa 0x%x overflows 64 bits" % r.gpa)
    for attr in ("gpa", "qva"):
        spans = sorted((getattr(r, attr), getattr(r, attr) + r.size) for r in regions)
        for (a0, a1), (b0, _) in zip(spans, spans[1:]):
            if b0 < a1:
                raise MemoryError_("regions overlap in %s space at 0x%x" % (attr, b0))
    return regions


def map_regions(regions, fds):
    """Map every region from offset 0 of its fd; all or nothing."""
    if len(fds) != len(regions):
        raise MemoryError_("%d fds for %d regions" % (len(fds), len(regions)))
    try:
        for r, fd in zip(regions, fds):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MemoryError_("region fd is not a memory file (use a shared memory backend, "
                                   "e.g. memory-backend-memfd with share=on)")
            if st.st_size < r.offset + r.size:
                raise MemoryError_("region fd holds %d bytes, the region needs %d"
                                   % (st.st_size, r.offset + r.size))
            align = max(st.st_blksize, os.sysconf("SC_PAGE_SIZE"))
            length = -(-(r.offset + r.size) // align) * align
            base = lib.sv3_map_fd(fd, length)
            if base == ffi.NULL:
                raise MemoryError_("mmap of %d bytes failed: %s"
                                   % (length, os.strerror(ffi.errno)))
            r.base, r.map_len = base, length
    except BaseException:
        unmap_regions(regions)
        raise
    return regions


def unmap_regions(regions):
    for r in regions:
        if r.base is not None:
            lib.sv3_unmap(r.base, r.map_len)
            r.base = None


def qva_to_host(regions, qva, length):
    """Local address of [qva, qva+length) if it lies inside one region."""
    for r in regions:
        if r.qva <= qva and qva + length <= r.qva + r.size:
            return r.host + (qva - r.qva)
    return None
