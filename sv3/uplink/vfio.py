"""A PCI device through VFIO (Linux Documentation/driver-api/vfio.rst):
the container, the device's IOMMU group, the device fd, BAR0, config
space, DMA mappings and MSI-X eventfds.  Used by the 82599 driver
(ixgbe.py) in the uplink's worker.

Two implementations of one interface:
  VfioDevice   the kernel's vfio-pci (a real device; scripts/vfio-rebind
               hands it over);
  ModelDevice  a device model reached over a unix socket (tests: the
               82599 model in tests/fakes/ixgbe_model.py), chosen by the
               environment variable SV3_VFIO_MODEL=<socket path>.
Both give the driver the same things: .bar (a cffi pointer to BAR0 for
the C data path), read32/write32, cfg_read/cfg_write, dma_map/dma_unmap,
set_irqs, reset and close.  DMA memory is a memfd (DmaMemory), so both a
real IOMMU (by address) and the model (by fd) can map it."""
import fcntl
import json
import mmap
import os
import socket
import struct

from .._native import ffi, lib

# linux/vfio.h: _IO(VFIO_TYPE ';', VFIO_BASE 100 + n)
VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU = 0x3B64, 0x3B65, 0x3B66
VFIO_GROUP_GET_STATUS, VFIO_GROUP_SET_CONTAINER, VFIO_GROUP_GET_DEVICE_FD = 0x3B67, 0x3B68, 0x3B6A
VFIO_DEVICE_GET_REGION_INFO, VFIO_DEVICE_SET_IRQS, VFIO_DEVICE_RESET = 0x3B6C, 0x3B6E, 0x3B6F
VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA = 0x3B71, 0x3B72
VFIO_API_VERSION, VFIO_TYPE1_IOMMU = 0, 1
VFIO_GROUP_FLAGS_VIABLE = 1
VFIO_REGION_INFO_FLAG_MMAP = 4
VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX = 0, 7, 2
VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 2, 1 << 5
VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE = 1, 2
REGION_INFO = struct.Struct("IIIIQQ")     # argsz flags index cap_offset size offset
DMA_MAP = struct.Struct("IIQQQ")          # argsz flags vaddr iova size
DMA_UNMAP = struct.Struct("IIQQ")         # argsz flags iova size
IRQ_SET = struct.Struct("IIIII")          # argsz flags index start count, then data


class VfioError(Exception):
    pass


class DmaMemory:
    """Memory the device may read and write: a memfd mapped here, at an
    IOVA of the driver's choosing (below 2^39, see the behaviour notes)."""

    def __init__(self, size, iova):
        self.size, self.iova = -(-size // 4096) * 4096, iova
        self.fd = os.memfd_create("sv3-dma", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self.map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buf = ffi.from_buffer(self.map)
        self.ptr = ffi.cast("uint8_t *", self.buf)
        self.vaddr = int(ffi.cast("uintptr_t", self.ptr))

    def close(self):
        ffi.release(self.buf)
        self.map.close()
        os.close(self.fd)


class VfioDevice:
    """vfio-pci: container, group /dev/vfio/<n>, device fd, BAR0 mmap."""

    def __init__(self, pci, sysfs="/sys/bus/pci/devices"):
        self.pci = pci
        link = os.path.join(sysfs, pci, "iommu_group")
        if not os.path.exists(link):
            raise VfioError("%s: no such PCI device, or no IOMMU group (is the IOMMU on?)" % pci)
        group = os.path.basename(os.readlink(link))
        self.container = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
        self.group = self.device = -1
        try:
            self._open(group)
        except BaseException:
            self.close()
            raise

    def _open(self, group):
        if fcntl.ioctl(self.container, VFIO_GET_API_VERSION) != VFIO_API_VERSION or \
                not fcntl.ioctl(self.container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU):
            raise VfioError("this kernel's VFIO lacks API %d with the type 1 IOMMU" % VFIO_API_VERSION)
        try:
            self.group = os.open("/dev/vfio/%s" % group, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise VfioError("/dev/vfio/%s: %s (bind the device with scripts/vfio-rebind %s USER)"
                            % (group, e.strerror, self.pci))
        status = bytearray(struct.pack("II", 8, 0))
        fcntl.ioctl(self.group, VFIO_GROUP_GET_STATUS, status)
        if not struct.unpack("II", status)[1] & VFIO_GROUP_FLAGS_VIABLE:
            raise VfioError("IOMMU group %s is not viable: every device in it must be bound to "
                            "vfio-pci (scripts/vfio-rebind does that)" % group)
        fcntl.ioctl(self.group, VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("i", self.container)))
        fcntl.ioctl(self.container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU)
        self.device = fcntl.ioctl(self.group, VFIO_GROUP_GET_DEVICE_FD, bytearray(self.pci.encode() + b"\0"))
        bar0 = self.region(VFIO_PCI_BAR0_REGION_INDEX)
        if not bar0[1] & VFIO_REGION_INFO_FLAG_MMAP:
            raise VfioError("%s: BAR0 cannot be mapped" % self.pci)
        self.cfg_offset = self.region(VFIO_PCI_CONFIG_REGION_INDEX)[5]
        self.bar_map = mmap.mmap(self.device, bar0[4], mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE, offset=bar0[5])
        self.bar_buf = ffi.from_buffer(self.bar_map)
        self.bar = ffi.cast("uint8_t *", self.bar_buf)

    def region(self, index):
        info = bytearray(REGION_INFO.pack(REGION_INFO.size, 0, index, 0, 0, 0))
        fcntl.ioctl(self.device, VFIO_DEVICE_GET_REGION_INFO, info)
        return REGION_INFO.unpack(info)

    def read32(self, off):
        return lib.sv3_mmio_read32(self.bar, off)

    def write32(self, off, v):
        lib.sv3_mmio_write32(self.bar, off, v)

    def cfg_read(self, off, size):
        return int.from_bytes(os.pread(self.device, size, self.cfg_offset + off), "little")

    def cfg_write(self, off, size, v):
        os.pwrite(self.device, v.to_bytes(size, "little"), self.cfg_offset + off)

    def dma_map(self, mem):
        flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE
        try:
            fcntl.ioctl(self.container, VFIO_IOMMU_MAP_DMA,
                        bytearray(DMA_MAP.pack(DMA_MAP.size, flags, mem.vaddr, mem.iova, mem.size)))
        except OSError as e:
            raise VfioError("VFIO_IOMMU_MAP_DMA of %d KiB failed: %s (pinned memory counts "
                            "against RLIMIT_MEMLOCK: raise it, e.g. LimitMEMLOCK= or ulimit -l)"
                            % (mem.size // 1024, e.strerror))

    def dma_unmap(self, mem):
        fcntl.ioctl(self.container, VFIO_IOMMU_UNMAP_DMA,
                    bytearray(DMA_UNMAP.pack(DMA_UNMAP.size, 0, mem.iova, mem.size)))

    def set_irqs(self, eventfds):
        """MSI-X vectors 0..n-1 to eventfds, in one call (vfio-pci sizes the
        allocation from the first call without dynamic MSI-X)."""
        data = struct.pack("%di" % len(eventfds), *eventfds)
        req = IRQ_SET.pack(IRQ_SET.size + len(data), VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                           VFIO_PCI_MSIX_IRQ_INDEX, 0, len(eventfds))
        fcntl.ioctl(self.device, VFIO_DEVICE_SET_IRQS, bytearray(req + data))

    def reset(self):
        fcntl.ioctl(self.device, VFIO_DEVICE_RESET)

    def close(self):
        if getattr(self, "bar_buf", None) is not None:
            ffi.release(self.bar_buf)
            self.bar_map.close()
            self.bar_buf = None
        for fd in (self.device, self.group, self.container):
            if fd >= 0:
                os.close(fd)
        self.device = self.group = self.container = -1


class ModelDevice:
    """The same interface, served by a device model over a unix socket
    (one JSON request per datagram, fds by SCM_RIGHTS; the protocol is
    documented in tests/fakes/ixgbe_model.py).  BAR0 is a shared memfd."""

    def __init__(self, pci, path):
        self.pci = pci
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(5)
        self.sock.connect(path)
        info, fds = self._call({"op": "open", "pci": pci}, want_fds=1)
        self.bar_fd = fds[0]
        self.bar_map = mmap.mmap(self.bar_fd, info["bar0_size"], mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        self.bar_buf = ffi.from_buffer(self.bar_map)
        self.bar = ffi.cast("uint8_t *", self.bar_buf)

    def _call(self, req, fds=(), want_fds=0):
        socket.send_fds(self.sock, [json.dumps(req).encode()], list(fds))
        data, got, _, _ = socket.recv_fds(self.sock, 65536, max(want_fds, 1))
        reply = json.loads(data or b"{}")
        if not reply.get("ok"):
            for fd in got:
                os.close(fd)
            raise VfioError("device model: %s: %s" % (req["op"], reply.get("error", "no reply")))
        return reply, got

    def read32(self, off):
        return self._call({"op": "read32", "off": off})[0]["v"]

    def write32(self, off, v):
        self._call({"op": "write32", "off": off, "v": v})

    def cfg_read(self, off, size):
        return self._call({"op": "cfg_read", "off": off, "size": size})[0]["v"]

    def cfg_write(self, off, size, v):
        self._call({"op": "cfg_write", "off": off, "size": size, "v": v})

    def dma_map(self, mem):
        self._call({"op": "dma_map", "iova": mem.iova, "size": mem.size, "offset": 0}, [mem.fd])

    def dma_unmap(self, mem):
        self._call({"op": "dma_unmap", "iova": mem.iova, "size": mem.size})

    def set_irqs(self, eventfds):
        self._call({"op": "set_irqs", "start": 0, "count": len(eventfds)}, eventfds)

    def reset(self):
        self._call({"op": "reset"})

    def close(self):
        if self.bar_buf is not None:
            ffi.release(self.bar_buf)
            self.bar_map.close()
            os.close(self.bar_fd)
            self.bar_buf = None
        self.sock.close()


def open_device(pci):
    """The device at pci: the model named by SV3_VFIO_MODEL, else vfio-pci."""
    model = os.environ.get("SV3_VFIO_MODEL")
    return ModelDevice(pci, model) if model else VfioDevice(pci)
