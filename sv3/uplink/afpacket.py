"""An AF_PACKET uplink on a Linux interface: the packet(7) socket with its
TPACKET_V2 RX and TX rings, and the interface's link state from rtnetlink.

Runs in the uplink's worker (sv3/nic_worker.py).  Python sets the socket
up and fills struct sv3_afp; afpacket.c moves the frames.  The socket is
promiscuous (PACKET_MR_PROMISC, dropped with the socket), ignores frames
the host itself sends on the interface (PACKET_IGNORE_OUTGOING), and asks
for virtio-net headers (PACKET_VNET_HDR), so that GSO frames and partial
checksums arrive whole and are finished in C.  Slots hold a GSO frame of
up to 64 KiB less the slot headers (TCP's own size goal stays below it;
a bigger frame is dropped and counted as oversize): RX_SLOTS and TX_SLOTS
of SLOT bytes, 16 + 4 MiB, contiguous (afpacket.c indexes them so)."""
import errno
import fcntl
import mmap
import socket
import struct

from .._native import ffi, lib

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 1, 1
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION = 5, 6, 10
PACKET_TX_RING, PACKET_VNET_HDR, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING = 13, 15, 20, 23
TPACKET_V2 = 1
ETH_P_ALL = 0x0003
SIOCGIFFLAGS, SIOCGIFMTU, SIOCGIFHWADDR = 0x8913, 0x8921, 0x8927
IFF_UP, IFF_RUNNING = 0x1, 0x40
RTMGRP_LINK, RTM_NEWLINK, RTM_DELLINK = 1, 16, 17

SLOT = 64 * 1024
BLOCK = 4 * SLOT              # one kernel allocation (order 6) per 4 slots
RX_SLOTS, TX_SLOTS = 256, 64


class AfPacket:
    """The socket, its rings and struct sv3_afp for one interface."""

    def __init__(self, ifname):
        self.ifname = ifname
        self.ifindex = socket.if_nametoindex(ifname)      # OSError: no such interface
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._setup()
        except BaseException:
            self.sock.close()
            raise

    def _setup(self):
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        for opt, slots in ((PACKET_RX_RING, RX_SLOTS), (PACKET_TX_RING, TX_SLOTS)):
            s.setsockopt(SOL_PACKET, opt, struct.pack("IIII", BLOCK, slots * SLOT // BLOCK, SLOT, slots))
        rx_bytes, tx_bytes = RX_SLOTS * SLOT, TX_SLOTS * SLOT
        self.map = mmap.mmap(s.fileno(), rx_bytes + tx_bytes, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        s.bind((self.ifname, ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                     struct.pack("iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b""))
        s.setblocking(False)
        self.buf = ffi.from_buffer(self.map)
        base = ffi.cast("uint8_t *", self.buf)
        self.scratch = ffi.new("uint8_t[]", lib.SV3_AFP_SCRATCH)
        a = self.afp = ffi.new("struct sv3_afp *")
        a.fd, a.slot_size = s.fileno(), SLOT
        a.rx, a.rx_slots = base, RX_SLOTS
        a.tx, a.tx_slots = base + rx_bytes, TX_SLOTS
        a.scratch = self.scratch
        a.link_up = self.link_up()

    def fileno(self):
        return self.sock.fileno()

    def _ifreq(self, request):
        return fcntl.ioctl(self.sock.fileno(), request, struct.pack("16s24x", self.ifname.encode()))

    def link_up(self):
        flags = struct.unpack_from("H", self._ifreq(SIOCGIFFLAGS), 16)[0]
        return bool(flags & IFF_UP and flags & IFF_RUNNING)

    def mtu(self):
        return struct.unpack_from("i", self._ifreq(SIOCGIFMTU), 16)[0]

    def mac(self):
        return self._ifreq(SIOCGIFHWADDR)[18:24]

    def kernel_drops(self):
        """Frames the kernel dropped because the RX ring was full, since
        the last call (PACKET_STATISTICS resets on read)."""
        _, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return drops

    def close(self):
        self.afp = None
        ffi.release(self.buf)
        self.map.close()
        self.sock.close()


class LinkMonitor:
    """rtnetlink link events (RTMGRP_LINK) for one interface index."""

    def __init__(self, ifindex):
        self.ifindex = ifindex
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setblocking(False)

    def fileno(self):
        return self.sock.fileno()

    def events(self):
        """-> True if the interface changed (or events were missed): the
        caller reads its state again."""
        news = False
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return news
            except OSError as e:
                if e.errno == errno.ENOBUFS:     # missed events
                    return True
                raise
            news = self._mentions_us(data) or news

    def _mentions_us(self, data):
        news, off = False, 0
        while off + 32 <= len(data):
            length, kind = struct.unpack_from("IH", data, off)
            index = struct.unpack_from("i", data, off + 20)[0]     # ifinfomsg.ifi_index
            news = news or (index == self.ifindex and kind in (RTM_NEWLINK, RTM_DELLINK))
            if length < 16:
                break
            off += (length + 3) & ~3
        return news

    def close(self):
        self.sock.close()
