"""vhost-user back-end of one port: the handler table, feature negotiation,
memory table and vring setup.  No frame code: the C core moves frames.

Runs inside the port worker, between calls into the C core, so handlers may
change struct sv3_port freely.  One handler per message, named after it;
the dispatcher (handle) validates payload size and fd count, closes fds no
handler took, and answers NEED_REPLY with a REPLY_ACK."""
import logging
import os

from .._native import lib
from ..virtio import constants as V
from . import memory
from . import protocol as P
from .channel import send_reply
from .protocol import Request as R

log = logging.getLogger("sv3.vhost")

# The offer is the same on every connection (QEMU checks it on reconnect).
# Offloads: the guest may send partial checksums and TCP GSO frames, and
# take them; a receiver that did not negotiate them gets frames completed
# or segmented by sv3 (sv3/_native/forward.c).
FEATURES = (V.bit(V.F_VERSION_1) | V.bit(V.NET_F_MRG_RXBUF) | V.bit(V.RING_F_EVENT_IDX)
            | V.bit(V.RING_F_INDIRECT_DESC) | V.bit(V.F_ANY_LAYOUT) | V.bit(P.F_PROTOCOL_FEATURES)
            | sum(V.bit(f) for f, _ in V.HOST_OFFLOADS + V.GUEST_OFFLOADS) | V.bit(V.NET_F_MTU)
            | V.bit(V.NET_F_MQ))
PROTOCOL_FEATURES = V.bit(P.PROTOCOL_F_MQ) | V.bit(P.PROTOCOL_F_REPLY_ACK) | V.bit(P.PROTOCOL_F_NET_MTU)
MTU_RANGE = (68, lib.SV3_MAX_FRAME - 18)      # IPv4 minimum .. what a ring record holds
MAX_QUEUE_PAIRS = 8        # one worker serves them all (sv3/_native/port.c vhost_breath)
NVRINGS = 2 * MAX_QUEUE_PAIRS
MAX_VRING_NUM = 32768


class HandlerError(Exception):
    """The request is refused; the connection stays up."""


# request -> (handler, payload size or None, fds: "none" | "vring" | "any")
TABLE = {
    R.GET_FEATURES: ("get_features", 0, "none"),
    R.SET_FEATURES: ("set_features", 8, "none"),
    R.SET_OWNER: ("set_owner", 0, "none"),
    R.RESET_OWNER: ("reset_owner", 0, "none"),
    R.SET_MEM_TABLE: ("set_mem_table", None, "any"),
    R.SET_VRING_NUM: ("set_vring_num", 8, "none"),
    R.SET_VRING_ADDR: ("set_vring_addr", 40, "none"),
    R.SET_VRING_BASE: ("set_vring_base", 8, "none"),
    R.GET_VRING_BASE: ("get_vring_base", 8, "none"),
    R.SET_VRING_KICK: ("set_vring_kick", 8, "vring"),
    R.SET_VRING_CALL: ("set_vring_call", 8, "vring"),
    R.SET_VRING_ERR: ("set_vring_err", 8, "vring"),
    R.GET_PROTOCOL_FEATURES: ("get_protocol_features", 0, "none"),
    R.SET_PROTOCOL_FEATURES: ("set_protocol_features", 8, "none"),
    R.GET_QUEUE_NUM: ("get_queue_num", 0, "none"),
    R.SET_VRING_ENABLE: ("set_vring_enable", 8, "none"),
    R.NET_SET_MTU: ("net_set_mtu", 8, "none"),
}


class VringInfo:
    """Python-side facts about one vring: its QVAs and the fds it owns."""
    __slots__ = ("desc", "avail", "used", "kick", "call", "err")

    def __init__(self):
        self.desc = self.avail = self.used = None
        self.kick = self.call = self.err = -1


class Backend:
    def __init__(self, sock, port, name):
        self.sock = sock
        self.port = port            # struct sv3_port * (owned by the worker)
        self.name = name
        self.features = 0
        self.protocol_features = 0
        self.regions = []
        self.vrings = [VringInfo() for _ in range(NVRINGS)]
        for i in range(NVRINGS):
            port.vr[i].kick_fd = port.vr[i].call_fd = -1

    # -- dispatch --------------------------------------------------------
    def handle(self, msg):
        entry = TABLE.get(msg.request)
        try:
            if entry is None:
                raise HandlerError("unsupported request %s" % msg.name)
            handler, size, fdrule = entry
            if size is not None and len(msg.payload) != size:
                raise HandlerError("%s with %d payload bytes (want %d)" % (msg.name, len(msg.payload), size))
            if fdrule == "none" and msg.fds:
                raise HandlerError("%s carried %d unexpected fds" % (msg.name, len(msg.fds)))
            reply = getattr(self, handler)(msg)
        except HandlerError as e:
            log.warning("%s: %s", self.name, e)
            msg.close_fds()
            if msg.request == R.GET_VRING_BASE:      # QEMU waits for it: answer anyway
                index = P.VRING_STATE.unpack(msg.payload)[0] if len(msg.payload) == 8 else 0
                send_reply(self.sock, msg.request, P.VRING_STATE.pack(index, 0))
            elif (entry and entry[0].startswith("get_")) or self._acks(msg):
                send_reply(self.sock, msg.request, P.U64.pack(1))
            return
        msg.close_fds()
        if reply is not None:
            send_reply(self.sock, msg.request, reply)
        elif self._acks(msg):
            send_reply(self.sock, msg.request, P.U64.pack(0))

    def _acks(self, msg):
        return msg.need_reply and self.protocol_features & V.bit(P.PROTOCOL_F_REPLY_ACK)

    def _u64(self, msg):
        return P.U64.unpack(msg.payload)[0]

    def _vring_index(self, index):
        if index >= NVRINGS:
            raise HandlerError("vring index %d out of range (max %d)" % (index, NVRINGS - 1))
        return index

    # -- features --------------------------------------------------------
    def get_features(self, msg):
        return P.U64.pack(FEATURES)

    def set_features(self, msg):
        f = self._u64(msg)
        if f & ~FEATURES:
            raise HandlerError("SET_FEATURES 0x%x is not a subset of the offer 0x%x" % (f, FEATURES))
        self.features = f
        p = self.port
        p.hdr_len = V.net_hdr_len(f)
        p.mrg_rxbuf = bool(f & V.bit(V.NET_F_MRG_RXBUF))
        p.event_idx = bool(f & V.bit(V.RING_F_EVENT_IDX))
        p.indirect = bool(f & V.bit(V.RING_F_INDIRECT_DESC))
        p.host_offloads = V.offloads(f, V.HOST_OFFLOADS)
        p.guest_offloads = V.offloads(f, V.GUEST_OFFLOADS)    # the worker tells its peers
        if not f & V.bit(P.F_PROTOCOL_FEATURES):
            for vr in p.vr:
                vr.enabled = 1      # without bit 30 rings start enabled
        log.info("%s: features 0x%x (header %d bytes, mrg_rxbuf %d, event_idx %d, offloads "
                 "from guest 0x%x, to guest 0x%x)", self.name, f, p.hdr_len, p.mrg_rxbuf,
                 p.event_idx, p.host_offloads, p.guest_offloads)

    def get_protocol_features(self, msg):
        return P.U64.pack(PROTOCOL_FEATURES)

    def set_protocol_features(self, msg):
        f = self._u64(msg)
        if f & ~PROTOCOL_FEATURES:
            raise HandlerError("SET_PROTOCOL_FEATURES 0x%x not a subset of 0x%x" % (f, PROTOCOL_FEATURES))
        self.protocol_features = f

    def get_queue_num(self, msg):
        return P.U64.pack(MAX_QUEUE_PAIRS)

    def set_owner(self, msg):
        pass

    def reset_owner(self, msg):
        for i in range(NVRINGS):
            self._stop(i)

    # -- memory ----------------------------------------------------------
    def set_mem_table(self, msg):
        try:
            regions = memory.parse_table(msg.payload)
            memory.map_regions(regions, msg.fds)
        except memory.MemoryError_ as e:
            raise HandlerError("SET_MEM_TABLE refused: %s" % e)
        old, self.regions = self.regions, regions
        p = self.port
        p.nregions = len(regions)
        for i, r in enumerate(regions):
            p.regions[i].gpa, p.regions[i].size = r.gpa, r.size
            p.regions[i].qva, p.regions[i].host = r.qva, r.host
        for i in range(NVRINGS):
            if p.vr[i].started and not self._translate(i):
                self._stop(i)
        memory.unmap_regions(old)
        log.info("%s: memory table of %d regions, %d MiB", self.name, len(regions),
                 sum(r.size for r in regions) >> 20)

    def _translate(self, i):
        """Local addresses of vring i, checked over their full size."""
        info, vr = self.vrings[i], self.port.vr[i]
        if info.desc is None or not self.regions or not vr.num:
            return False
        n = vr.num
        parts = [(info.desc, 16 * n, 16), (info.avail, 6 + 2 * n, 2), (info.used, 6 + 8 * n, 4)]
        hosts = []
        for qva, length, align in parts:
            host = memory.qva_to_host(self.regions, qva, length)
            if host is None or host % align:
                log.warning("%s: vring %d address 0x%x (%d bytes) is outside guest memory or misaligned",
                            self.name, i, qva, length)
                return False
            hosts.append(host)
        vr.desc, vr.avail, vr.used = hosts
        return True

    # -- vrings ----------------------------------------------------------
    def set_vring_num(self, msg):
        i, num = P.VRING_STATE.unpack(msg.payload)
        i = self._vring_index(i)
        if num == 0 or num > MAX_VRING_NUM or num & (num - 1):
            raise HandlerError("vring %d size %d is not a power of two in 1..%d" % (i, num, MAX_VRING_NUM))
        if self.port.vr[i].started:
            raise HandlerError("vring %d size change while started" % i)
        self.port.vr[i].num = num

    def set_vring_addr(self, msg):
        i, _flags, desc, used, avail, _log = P.VRING_ADDR.unpack(msg.payload)
        i = self._vring_index(i)
        info = self.vrings[i]
        info.desc, info.used, info.avail = desc, used, avail
        if self.regions and self.port.vr[i].num and not self._translate(i):
            raise HandlerError("vring %d addresses do not translate" % i)

    def set_vring_base(self, msg):
        i, base = P.VRING_STATE.unpack(msg.payload)
        i = self._vring_index(i)
        if self.port.vr[i].started:
            raise HandlerError("SET_VRING_BASE on started vring %d" % i)
        self.port.vr[i].last_avail_idx = base & 0xFFFF

    def get_vring_base(self, msg):
        i, _ = P.VRING_STATE.unpack(msg.payload)
        i = self._vring_index(i)
        self._stop(i)
        if not any(vr.started for vr in self.port.vr):
            self.port.broken = 0        # the front-end restarts the device
        return P.VRING_STATE.pack(i, self.port.vr[i].last_avail_idx)

    def _vring_fd(self, msg):
        v = self._u64(msg)
        if v & ~(P.VRING_IDX_MASK | P.VRING_NOFD_MASK):
            raise HandlerError("%s value 0x%x has reserved bits set" % (msg.name, v))
        i = self._vring_index(v & P.VRING_IDX_MASK)
        want = 0 if v & P.VRING_NOFD_MASK else 1
        if len(msg.fds) != want:
            raise HandlerError("%s for vring %d carried %d fds (want %d)" % (msg.name, i, len(msg.fds), want))
        fd = msg.fds.pop() if want else -1
        return i, fd

    def _notify_fd(self, msg):
        """A call or err fd, made non-blocking: a write must never block us."""
        i, fd = self._vring_fd(msg)
        if fd >= 0:
            try:
                os.set_blocking(fd, False)
            except OSError as e:
                os.close(fd)
                raise HandlerError("%s for vring %d: unusable fd (%s)" % (msg.name, i, e.strerror))
        return i, fd

    def _replace_fd(self, info, attr, fd):
        old = getattr(info, attr)
        setattr(info, attr, fd)
        if old >= 0:
            os.close(old)

    def set_vring_kick(self, msg):
        i, fd = self._vring_fd(msg)
        self._stop(i)
        self._replace_fd(self.vrings[i], "kick", fd)
        self.port.vr[i].kick_fd = fd
        if not self._translate(i):
            raise HandlerError("vring %d kicked before its memory and addresses are known" % i)
        if lib.sv3_vring_start(self.port, i) != 0:
            raise HandlerError("vring %d cannot start" % i)
        log.info("%s: vring %d started, size %d, avail index %d", self.name, i,
                 self.port.vr[i].num, self.port.vr[i].last_avail_idx)

    def set_vring_call(self, msg):
        i, fd = self._notify_fd(msg)
        self._replace_fd(self.vrings[i], "call", fd)
        self.port.vr[i].call_fd = fd

    def set_vring_err(self, msg):
        i, fd = self._notify_fd(msg)
        self._replace_fd(self.vrings[i], "err", fd)

    def set_vring_enable(self, msg):
        i, num = P.VRING_STATE.unpack(msg.payload)
        i = self._vring_index(i)
        self.port.vr[i].enabled = 1 if num else 0

    def net_set_mtu(self, msg):
        """QEMU's host_mtu (the guest sees it as VIRTIO_NET_F_MTU): this
        port's MTU instead of the switch's --mtu."""
        mtu = self._u64(msg)
        if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
            raise HandlerError("NET_SET_MTU %d is outside %d..%d" % (mtu, *MTU_RANGE))
        self.port.mtu = mtu
        log.info("%s: MTU %d", self.name, mtu)

    def _stop(self, i):
        """Stop vring i: the C core never touches it again until restarted."""
        vr = self.port.vr[i]
        vr.started = 0
        vr.kick_fd = -1
        self._replace_fd(self.vrings[i], "kick", -1)

    # -- helpers for the worker -------------------------------------------
    def drop_kick(self, fd):
        """Forget a kick fd that hung up; its vring keeps running, polled."""
        for i, info in enumerate(self.vrings):
            if info.kick == fd:
                self._replace_fd(info, "kick", -1)
                self.port.vr[i].kick_fd = -1

    def kick_fds(self):
        return [info.kick for info in self.vrings if info.kick >= 0]

    def signal_error(self, i):
        """Tell the front-end that vring i is broken (SET_VRING_ERR fd)."""
        fd = self.vrings[i].err if i < NVRINGS else -1
        if fd >= 0:
            try:
                os.write(fd, (1).to_bytes(8, "little"))
            except OSError:
                pass

    def close(self):
        for i in range(NVRINGS):
            self._stop(i)
            for attr in ("call", "err"):
                self._replace_fd(self.vrings[i], attr, -1)
            self.port.vr[i].call_fd = -1
        memory.unmap_regions(self.regions)
        self.regions = []
        self.port.nregions = 0
