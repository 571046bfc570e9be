"""A device model of the Intel 82599 10 GbE NIC, served to one driver at a
time over a VFIO-like AF_UNIX SOCK_SEQPACKET protocol: one JSON request per
datagram, fds by SCM_RIGHTS, exactly one JSON reply each.

BAR0 is a shared memfd.  The driver stores RDT and TDT straight into it and
the model polls them; every other register goes through read32/write32,
which apply the side effects.  Descriptor and buffer "DMA" goes through the
fds the driver dma_map'ed; an access outside every mapping is an IOMMU
fault, which stops the queue and is appended to model.errors.  Register
names and bits follow the 82599 datasheet (section 8.2.3) and Linux
ixgbe_type.h.  Queue 0 only; no RSS, RSC, TSO, VLAN or MAC filter tables.
"""
import json
import mmap
import os
import socket
import threading
import time
import zlib

from tests.fakes.wire_host import inet_checksum, inet_sum, parse_ip, pseudo_sum

BAR0_SIZE, CFG_SIZE, IRQS, IOVA_LIMIT, PAGE, MIN_FRAME = 0x20000, 256, 2, 1 << 39, 4096, 60

# -- registers (datasheet 8.2.3) ------------------------------------------------
CTRL, STATUS, CTRL_EXT = 0x00000, 0x00008, 0x00018
EICR, EICS, EIAC, EITR0 = 0x00800, 0x00808, 0x00810, 0x00820
EIMS, EIMC, EIAM, GPIE, IVAR0, IVAR_MISC = 0x00880, 0x00888, 0x00890, 0x00898, 0x00900, 0x00A00
RDBAL, RDBAH, RDLEN, RDH, RDT, RXDCTL0 = 0x01000, 0x01004, 0x01008, 0x01010, 0x01018, 0x01028
QPRDC0, SRRCTL0, RDRXCTL, RXCTRL, MPC0 = 0x01430, 0x02100, 0x02F00, 0x03000, 0x03FA0
CRCERRS, GPRC, GPTC = 0x04000, 0x04074, 0x04080
GORCL, GORCH, GOTCL, GOTCH = 0x04088, 0x0408C, 0x04090, 0x04094
HLREG0, AUTOC, LINKS, DMATXCTL, FCTRL = 0x04240, 0x042A0, 0x042A4, 0x04A80, 0x05080
TDBAL, TDBAH, TDLEN, TDH, TDT, TXDCTL0 = 0x06000, 0x06004, 0x06008, 0x06010, 0x06018, 0x06028
TDWBAL, TDWBAH, SECRXCTRL, SECRXSTAT = 0x06038, 0x0603C, 0x08D00, 0x08D04
RAL0, RAH0, EEC = 0x0A200, 0x0A204, 0x10010
ALIASES = {0x01014: SRRCTL0, 0x0100C: 0x02200, 0x05400: RAL0, 0x05404: RAH0, 0x05480: 0x0EA00}
STATS = (QPRDC0, MPC0, CRCERRS, GPRC, GPTC, GORCL, GORCH, GOTCL, GOTCH)
CLEAR_ON_READ, READ_ONLY = frozenset(STATS + (EICR,)), frozenset(STATS + (STATUS, LINKS, SECRXSTAT))

CTRL_MASTER_DISABLE, CTRL_LRST, CTRL_RST = 1 << 2, 1 << 3, 1 << 26
STATUS_GIO_MASTER_ENABLE, CTRL_EXT_DRV_LOAD = 1 << 19, 1 << 28
EICR_RTX_QUEUE0, EICR_LSC, QUEUE_CAUSES = 1 << 0, 1 << 20, 0xFFFF
IVAR_VALID_RX0_TX0 = 1 << 7 | 1 << 15
QUEUE_ENABLE = 1 << 25                                      # RXDCTL and TXDCTL
SRRCTL_DESCTYPE_ADV_ONEBUF, SRRCTL_DROP_EN = 1, 1 << 28
RDRXCTL_CRCSTRIP, RDRXCTL_DMAIDONE, RXCTRL_RXEN, DMATXCTL_TE = 1 << 1, 1 << 3, 1, 1
HLREG0_TXCRCEN, HLREG0_RXCRCSTRP, HLREG0_TXPADEN = 1 << 0, 1 << 1, 1 << 10
AUTOC_AN_RESTART, LINKS_UP, LINKS_SPEED_10G = 1 << 12, 1 << 30, 3 << 28
FCTRL_MPE, FCTRL_UPE, FCTRL_BAM = 1 << 8, 1 << 9, 1 << 10
RAH_AV, EEC_ARD, SECRXSTAT_SECRX_RDY, TDWBAL_HEAD_WB_EN = 1 << 31, 1 << 9, 1, 1
PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 0x04, 1 << 1, 1 << 2

# -- descriptors (datasheet 7.1.6 RX, 7.2.3 TX) ------------------------------------
RXD_DD, RXD_EOP, RXD_L4CS, RXD_IPCS, RXD_L4E, RXD_IPE = 1, 2, 1 << 5, 1 << 6, 1 << 30, 1 << 31
PTYPE_IPV4, PTYPE_IPV6, PTYPE_TCP, PTYPE_UDP = 1 << 4, 1 << 6, 1 << 8, 1 << 9
TXD_DTYP_CTXT, TXD_DTYP_DATA = 0x2, 0x3
TXD_EOP, TXD_IFCS, TXD_RS, TXD_DEXT, TXD_TSE = 1 << 24, 1 << 25, 1 << 27, 1 << 29, 1 << 31
TXD_IXSM, TXD_TXSM, TXD_PAYLEN_SHIFT, TXD_STAT_DD = 1 << 40, 1 << 41, 46, 1 << 32


class QueueError(Exception):
    """Stops the queue it happened on (and is recorded in model.errors)."""


class ProtocolError(Exception):
    """Answers the current request with an error reply."""


def _classify(frame):
    """RX write-back packet type and checksum status bits (datasheet 7.1.6.2)."""
    parsed = parse_ip(frame)
    if parsed is None:
        return 0, 0
    l3, proto, l4, header_ok = parsed
    ptype = PTYPE_IPV4 if l3[0] >> 4 == 4 else PTYPE_IPV6
    status = 0 if header_ok is None else RXD_IPCS if header_ok else RXD_IPE
    if proto not in (6, 17) or len(l4) < (20 if proto == 6 else 8):
        return ptype, status
    ptype |= PTYPE_TCP if proto == 6 else PTYPE_UDP
    if proto == 17 and l4[6:8] == b"\0\0":
        return ptype, status                                # UDP without a checksum
    good = inet_sum(l4, pseudo_sum(l3, proto, len(l4))) == 0xFFFF
    return ptype, status | (RXD_L4CS if good else RXD_L4E)


class _Mapping:
    """One dma_map: IOVA [iova, iova+size) is the fd's bytes [offset, offset+size)."""

    def __init__(self, iova, size, fd, offset):
        self.iova, self.size = iova, size
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, offset=offset)
        self.q = memoryview(self.mm).cast("Q")              # single 8-byte stores

    def close(self):
        self.q.release()
        self.mm.close()


class Ixgbe82599Model:
    def __init__(self, sock_path, device_id=0x10FB, mac=bytes.fromhex("020000008299")):
        self.sock_path, self.device_id, self.mac = sock_path, device_id, bytes(mac)
        self.errors, self.irq_counts = [], [0] * IRQS
        self.stats = dict(rx_frames=0, rx_missed=0, rx_filtered=0, tx_frames=0, tx_link_down=0)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._wire, self._timers, self._maps, self._irqs, self._threads = [], [], [], {}, []
        self._cable, self._client, self._gen = True, None, 0
        self._opened = self._closing = False
        self._bar_fd = os.memfd_create("ixgbe-bar0", os.MFD_CLOEXEC)
        os.ftruncate(self._bar_fd, BAR0_SIZE)
        self._bar = mmap.mmap(self._bar_fd, BAR0_SIZE)
        self._regs = memoryview(self._bar).cast("I")        # single 4-byte loads and stores
        self._cfg = bytearray(CFG_SIZE)
        self._power_on()

    # -- public API ---------------------------------------------------------------
    def start(self):
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(self.sock_path)
        self._listener.listen(1)
        self._listener.settimeout(0.05)
        for fn in (self._serve, self._engine):
            self._threads.append(threading.Thread(target=fn, daemon=True, name="ixgbe-model"))
            self._threads[-1].start()
        return self

    def stop(self):
        self._stopping.set()
        for t in self._threads:
            t.join(5)
        self._listener.close()
        with self._lock:
            self._detach()
            self._regs.release()
            self._bar.close()
            os.close(self._bar_fd)
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()

    @property
    def connected(self):
        return self._client is not None

    def inject(self, frame):
        """A frame (without FCS) arrives from the wire; True if it went to the RX ring."""
        frame = bytes(frame)
        if len(frame) < 14:
            raise ValueError("a frame needs at least an Ethernet header")
        with self._lock:
            if not self._rx_ready():
                return False
            if not self._accept(frame):
                self.stats["rx_filtered"] += 1
                return False
            try:
                return self._receive(frame)
            except QueueError as e:
                self._stop_queue("rx", str(e))
                return False

    def sent(self):
        return self.wait_sent(0, 0)

    def wait_sent(self, n, timeout):
        """Waits for at least n frames on the wire; returns (and forgets) all of them."""
        with self._cv:
            self._cv.wait_for(lambda: len(self._wire) >= n, timeout)
            frames, self._wire = self._wire, []
            return frames

    def set_cable(self, connected):
        with self._lock:
            self._cable = bool(connected)
            if not connected:
                self._set_link(False)
            elif self._link_wanted and not self._link_up:
                self._after(0.010, self._link_timer)

    def device_reset(self):
        with self._lock:
            self._reset()

    def peek(self, off):
        with self._lock:
            return self._r(ALIASES.get(off, off))

    def dma_mappings(self):
        with self._lock:
            return [(m.iova, m.size) for m in self._maps]

    # -- register file --------------------------------------------------------------
    def _r(self, off):
        return self._regs[off >> 2]

    def _w(self, off, v):
        self._regs[off >> 2] = v & 0xFFFFFFFF

    def _power_on(self):
        self._cfg[:] = bytes(CFG_SIZE)
        self._cfg[0:4] = (0x8086 | self.device_id << 16).to_bytes(4, "little")
        self._cfg[0x08:0x0C] = (0x02000001).to_bytes(4, "little")   # class 020000, revision 1
        self._cfg[0x10] = 0x0C                                      # BAR0: 64-bit, prefetchable
        self._reset()
        self._w(EEC, EEC_ARD)

    def _reset(self):
        """Register defaults (datasheet 4.2.1): queues stopped, link down, DRV_LOAD clear."""
        self._gen += 1                                              # cancels pending timers
        self._bar[:] = bytes(BAR0_SIZE)
        for off, v in ((STATUS, STATUS_GIO_MASTER_ENABLE), (RDRXCTL, RDRXCTL_DMAIDONE),
                       (SECRXSTAT, SECRXSTAT_SECRX_RDY),
                       (HLREG0, HLREG0_TXCRCEN | HLREG0_RXCRCSTRP | HLREG0_TXPADEN),
                       (RAL0, int.from_bytes(self.mac[:4], "little")),
                       (RAH0, int.from_bytes(self.mac[4:], "little") | RAH_AV)):
            self._w(off, v)
        self._after(0.001, lambda: self._w(EEC, self._r(EEC) | EEC_ARD))   # EEPROM auto-read
        self._rx_stopped = self._tx_stopped = self._link_up = self._link_wanted = False
        self._ctx = None

    def _read(self, off):
        v = self._r(off)
        if off in CLEAR_ON_READ:
            self._w(off, 0)
        return 0 if off == EIMC else v

    def _write(self, off, v):
        handler = self._WRITERS.get(off)
        if handler:
            handler(self, off, v)
        elif off not in READ_ONLY:
            self._w(off, v)

    def _w_ctrl(self, off, v):
        if v & (CTRL_RST | CTRL_LRST):                  # 4.2.1.6.1: self-clearing after ~1 ms
            self._reset()
            self._w(CTRL, v & (CTRL_RST | CTRL_LRST))
            self._after(0.001, lambda: self._w(CTRL, 0))
            return
        self._w(CTRL, v)
        master = 0 if v & CTRL_MASTER_DISABLE else STATUS_GIO_MASTER_ENABLE
        self._w(STATUS, self._r(STATUS) & ~STATUS_GIO_MASTER_ENABLE | master)

    def _w_eims(self, off, v):
        unmasked = v & ~self._r(EIMS)
        self._w(EIMS, self._r(EIMS) | v)
        self._fire(unmasked & self._r(EICR))            # pending causes fire when unmasked

    def _w_autoc(self, off, v):
        self._w(AUTOC, v & ~AUTOC_AN_RESTART)           # restart bit self-clears
        if v & AUTOC_AN_RESTART:
            self._link_wanted = True
            if self._cable:
                self._after(0.010, self._link_timer)

    def _w_ring(self, off, v):
        queue = "rx" if off < TDBAL else "tx"
        if self._r(RXDCTL0 if queue == "rx" else TXDCTL0) & QUEUE_ENABLE:
            self._stop_queue(queue, "write to %#07x while the queue is enabled" % off)
        self._w(off, v)

    def _w_enable(self, off, v):
        rx = off in (RXDCTL0, RXCTRL)
        was = self._rx_enabled() if rx else self._tx_enabled()
        self._w(off, v)
        if rx and not was and self._rx_enabled():
            self._check_rx_config()
        elif not rx and not was and self._tx_enabled():
            self._check_ring("tx", TDBAL, TDLEN)

    _WRITERS = {
        CTRL: _w_ctrl, EIMS: _w_eims, AUTOC: _w_autoc,
        EICR: lambda s, off, v: s._w(EICR, s._r(EICR) & ~v),       # write 1 to clear
        EICS: lambda s, off, v: s._cause(v),
        EIMC: lambda s, off, v: s._w(EIMS, s._r(EIMS) & ~v),
        RDRXCTL: lambda s, off, v: s._w(off, v | RDRXCTL_DMAIDONE),
        EEC: lambda s, off, v: s._w(off, v & ~EEC_ARD | s._r(EEC) & EEC_ARD),
        **dict.fromkeys((RXDCTL0, RXCTRL, TXDCTL0, DMATXCTL), _w_enable),
        **dict.fromkeys((RDBAL, RDBAH, RDLEN, RDH, TDBAL, TDBAH, TDLEN, TDH), _w_ring)}

    def _count(self, low, n, wide=False):
        """Adds n to a statistics register (a 64-bit low/high pair if wide)."""
        v = (self._r(low) | (self._r(low + 4) << 32 if wide else 0)) + n
        self._w(low, v)
        if wide:
            self._w(low + 4, v >> 32)

    def _after(self, delay, fn):
        self._timers.append((time.monotonic() + delay, self._gen, fn))

    def _run_timers(self):
        now = time.monotonic()
        due = [t for t in self._timers if t[0] <= now]
        self._timers = [t for t in self._timers if t[0] > now]
        for _, gen, fn in due:
            if gen == self._gen:
                fn()

    # -- interrupts (datasheet 7.3) and link ----------------------------------------
    def _cause(self, bits):
        self._w(EICR, self._r(EICR) | bits)
        self._fire(bits & self._r(EIMS))

    def _fire(self, bits):
        """Vector 0: queue 0 causes; vector 1: all other causes.  Then EIAM auto-masks."""
        for vec, causes in ((0, QUEUE_CAUSES), (1, ~QUEUE_CAUSES & 0xFFFFFFFF)):
            if bits & causes:
                self.irq_counts[vec] += 1
                if vec in self._irqs:
                    os.write(self._irqs[vec], (1).to_bytes(8, "little"))
                self._w(EIMS, self._r(EIMS) & ~(self._r(EIAM) & bits & causes))

    def _set_link(self, up):
        if up != self._link_up:
            self._link_up = up
            self._w(LINKS, LINKS_UP | LINKS_SPEED_10G if up else 0)
            self._cause(EICR_LSC)

    def _link_timer(self):
        if self._cable and self._link_wanted:
            self._set_link(True)

    # -- DMA --------------------------------------------------------------------------
    def _find(self, iova, n, what):
        for m in self._maps:
            if m.iova <= iova and iova + n <= m.iova + m.size:
                return m, iova - m.iova
        raise QueueError("IOMMU fault: %s at IOVA %#x+%d is not mapped" % (what, iova, n))

    def _dma_read(self, iova, n, what):
        m, off = self._find(iova, n, what)
        return bytes(m.mm[off:off + n])

    def _dma_write(self, iova, data, what):
        m, off = self._find(iova, len(data), what)
        m.mm[off:off + len(data)] = data

    def _qword(self, iova, what, store=None):
        """Loads (or stores) one aligned 64-bit descriptor word with a single access."""
        m, off = self._find(iova, 8, what)
        if store is None:
            return m.q[off >> 3]
        m.q[off >> 3] = store

    def _stop_queue(self, queue, msg):
        if not getattr(self, "_%s_stopped" % queue):
            setattr(self, "_%s_stopped" % queue, True)
            self.errors.append("%s queue 0 stopped: %s" % (queue.upper(), msg))

    def _check_ring(self, queue, bal, length):
        base, size = self._r(bal + 4) << 32 | self._r(bal), self._r(length)
        if base % 128 or size == 0 or size % 128:
            self._stop_queue(queue, "ring base %#x, length %d: not 128-byte units" % (base, size))

    # -- RX (datasheet 7.1) -------------------------------------------------------------
    def _rx_enabled(self):
        return bool(self._r(RXCTRL) & RXCTRL_RXEN and self._r(RXDCTL0) & QUEUE_ENABLE)

    def _rx_ready(self):
        master = self._cfg[PCI_COMMAND] & PCI_COMMAND_MASTER
        return self._rx_enabled() and self._link_up and master and not self._rx_stopped

    def _check_rx_config(self):
        desctype = (self._r(SRRCTL0) >> 25) & 7
        if desctype != SRRCTL_DESCTYPE_ADV_ONEBUF:
            self.errors.append("RX enabled with SRRCTL0.DESCTYPE %d, not 001" % desctype)
        if bool(self._r(RDRXCTL) & RDRXCTL_CRCSTRIP) != bool(self._r(HLREG0) & HLREG0_RXCRCSTRP):
            self.errors.append("RX enabled with RDRXCTL.CRCSTRIP != HLREG0.RXCRCSTRP")
        if self._r(IVAR0) & IVAR_VALID_RX0_TX0 != IVAR_VALID_RX0_TX0:
            self.errors.append("RX enabled before IVAR0 routes queue 0 (valid bits 7, 15)")
        self._check_ring("rx", RDBAL, RDLEN)

    def _accept(self, frame):
        """FCTRL filtering (datasheet 7.1.1.1): our RAL0/RAH0, else UPE / MPE / BAM."""
        dst, fctrl = frame[:6], self._r(FCTRL)
        if dst == b"\xff" * 6:
            return bool(fctrl & FCTRL_BAM)
        if dst[0] & 1:
            return bool(fctrl & FCTRL_MPE)
        ours = (self._r(RAL0) | (self._r(RAH0) & 0xFFFF) << 32).to_bytes(6, "little")
        return bool(self._r(RAH0) & RAH_AV and dst == ours or fctrl & FCTRL_UPE)

    def _receive(self, frame):
        ring, head, tail = self._r(RDLEN) // 16, self._r(RDH), self._r(RDT)
        if tail >= ring:
            raise QueueError("RDT %d >= ring size %d" % (tail, ring))
        fcs = b"" if self._r(HLREG0) & HLREG0_RXCRCSTRP else zlib.crc32(frame).to_bytes(4, "little")
        data, bsize = frame + fcs, ((self._r(SRRCTL0) & 0x1F) or 2) * 1024
        need = max(1, -(-len(data) // bsize))
        if (tail - head) % ring < need:
            self._count(MPC0, 1)
            if self._r(SRRCTL0) & SRRCTL_DROP_EN:
                self._count(QPRDC0, 1)
            self.stats["rx_missed"] += 1
            return False
        ptype, status = _classify(frame)
        base = self._r(RDBAH) << 32 | self._r(RDBAL)
        for i in range(need):           # buffer, then qword0, then qword1 with DD
            desc, chunk = base + 16 * ((head + i) % ring), data[i * bsize:(i + 1) * bsize]
            self._dma_write(self._qword(desc, "RX descriptor"), chunk, "RX buffer")
            self._qword(desc, "RX descriptor", ptype)
            last = RXD_EOP | status if i == need - 1 else 0
            self._qword(desc + 8, "RX descriptor", RXD_DD | last | len(chunk) << 32)
        self._w(RDH, (head + need) % ring)
        self._count(GPRC, 1)
        self._count(GORCL, len(frame) + 4, wide=True)
        self.stats["rx_frames"] += 1
        self._cause(EICR_RTX_QUEUE0)
        return True

    # -- TX (datasheet 7.2) ---------------------------------------------------------------
    def _tx_enabled(self):
        return bool(self._r(DMATXCTL) & DMATXCTL_TE and self._r(TXDCTL0) & QUEUE_ENABLE)

    def _poll_tails(self):
        """Engine step: check RDT, run TX; True if TX did any work."""
        rx_ring = self._r(RDLEN) // 16
        if self._rx_enabled() and self._r(RDT) >= rx_ring:
            self._stop_queue("rx", "RDT %d >= ring size %d" % (self._r(RDT), rx_ring))
        master = self._cfg[PCI_COMMAND] & PCI_COMMAND_MASTER
        if not (self._tx_enabled() and master) or self._tx_stopped:
            return False
        ring, head, tail = self._r(TDLEN) // 16, self._r(TDH), self._r(TDT)
        try:
            if tail >= ring:
                raise QueueError("TDT %d >= ring size %d" % (tail, ring))
            new_head = self._tx_run(head, tail, ring) if head != tail else head
            if new_head == head:
                return False
            self._w(TDH, new_head)
            if self._r(TDWBAL) & TDWBAL_HEAD_WB_EN:
                iova = self._r(TDWBAH) << 32 | self._r(TDWBAL) & ~3
                self._dma_write(iova, new_head.to_bytes(4, "little"), "TX head write-back")
        except QueueError as e:
            self._stop_queue("tx", str(e))
            return False
        self._cause(EICR_RTX_QUEUE0)
        return True

    def _tx_run(self, head, tail, ring):
        """Processes whole frames from head towards tail; returns the new head."""
        base, frame, i = self._r(TDBAH) << 32 | self._r(TDBAL), [], head
        while i != tail:
            desc = base + 16 * i
            q0, q1 = self._qword(desc, "TX descriptor"), self._qword(desc + 8, "TX descriptor")
            dtyp = (q1 >> 20) & 0xF
            if not q1 & TXD_DEXT or dtyp not in (TXD_DTYP_CTXT, TXD_DTYP_DATA):
                raise QueueError("TX descriptor %d: DTYP %#x, DEXT %d (only advanced "
                                 "context and data descriptors)" % (i, dtyp, q1 >> 29 & 1))
            i = (i + 1) % ring
            if dtyp == TXD_DTYP_CTXT:
                self._ctx = (q0, q1)
                head = head if frame else i
            elif q1 & TXD_EOP:
                self._tx_frame(frame + [(desc, q0, q1)])
                frame, head = [], i
            else:
                frame.append((desc, q0, q1))
        return head

    def _tx_frame(self, descs):
        first, (last, _, last_q1) = descs[0][2], descs[-1]
        data = bytearray()
        for _, q0, q1 in descs:
            data += self._dma_read(q0, q1 & 0xFFFF, "TX buffer")
        if last_q1 & TXD_RS and not self._r(TDWBAL) & TDWBAL_HEAD_WB_EN:
            self._qword(last + 8, "TX descriptor", TXD_STAT_DD)
        if first & TXD_TSE:
            self.errors.append("TSO not modelled (a frame of %d bytes dropped)" % len(data))
            return
        paylen = first >> TXD_PAYLEN_SHIFT
        if paylen != len(data):
            self.errors.append("TX PAYLEN %d != frame length %d" % (paylen, len(data)))
        self._tx_checksums(data, first)
        if self._r(HLREG0) & HLREG0_TXPADEN and len(data) < MIN_FRAME:
            data += bytes(MIN_FRAME - len(data))
        if not self._link_up:
            self.stats["tx_link_down"] += 1
            return
        self._wire.append(bytes(data))
        self._count(GPTC, 1)
        self._count(GOTCL, len(data) + 4, wide=True)
        self.stats["tx_frames"] += 1
        self._cv.notify_all()

    def _tx_checksums(self, data, q1):
        """IXSM / TXSM offloads (datasheet 7.2.5) where the context descriptor says."""
        if not q1 & (TXD_IXSM | TXD_TXSM):
            return
        if self._ctx is None:
            self.errors.append("TX checksum offload without a context descriptor")
            return
        c0, c1 = self._ctx
        maclen, iplen, l4t = (c0 >> 9) & 0x7F, c0 & 0x1FF, (c1 >> 11) & 3
        if q1 & TXD_IXSM:
            data[maclen + 10:maclen + 12] = b"\0\0"
            csum = inet_checksum(data[maclen:maclen + iplen])
            data[maclen + 10:maclen + 12] = csum.to_bytes(2, "big")
        if q1 & TXD_TXSM:
            field = maclen + iplen + (16 if l4t else 6)     # TCP (L4T 01) or UDP (00)
            if l4t > 1 or field + 2 > len(data):
                self.errors.append("TX L4 checksum: L4T %d, field at %d of %d bytes"
                                   % (l4t, field, len(data)))
                return
            csum = ~inet_sum(data[maclen + iplen:]) & 0xFFFF  # the driver seeded the pseudo-header
            data[field:field + 2] = (csum or (0 if l4t else 0xFFFF)).to_bytes(2, "big")

    def _engine(self):
        while not self._stopping.is_set():
            with self._lock:
                try:
                    self._run_timers()
                    busy = self._poll_tails()
                except Exception as e:          # a model bug: make it visible, stop the engine
                    self.errors.append("model engine failed: %r" % e)
                    return
            if not busy:
                time.sleep(0.0002 if self._client else 0.001)

    # -- the socket protocol ------------------------------------------------------------------
    def _serve(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(0.05)
                self._client = conn
                while not self._stopping.is_set() and self._serve_one(conn):
                    pass
                with self._lock:
                    self._detach()
                self._client = None

    def _serve_one(self, conn):
        """One request and its reply; False once the client has gone or closed."""
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 65536, 16)
        except socket.timeout:
            return True
        except OSError:
            return False
        reply, out = self._dispatch(msg, fds) if msg else (None, [])
        for fd in fds:
            os.close(fd)
        if reply is None:                       # end of file: the client disconnected
            return False
        try:
            socket.send_fds(conn, [json.dumps(reply).encode()], out)
        except OSError:
            return False
        return not self._closing

    def _dispatch(self, msg, fds):
        """One request; fds a handler keeps are popped from the list, the caller closes the rest."""
        try:
            req = json.loads(msg)
            op = req.get("op") if isinstance(req, dict) else None
            handler = getattr(self, "_op_" + str(op), None)
            if handler is None:
                raise ProtocolError("unknown request %r" % (op,))
            if op != "open" and not self._opened:
                raise ProtocolError("device not open")
            with self._lock:
                result, out = handler(req, fds)
            return dict(ok=True, **result), out
        except (ProtocolError, ValueError, OSError) as e:
            return {"ok": False, "error": str(e)}, []
        except Exception as e:                  # a model bug: reply, and fail the test later
            self.errors.append("model failed on %r: %r" % (msg[:200], e))
            return {"ok": False, "error": "model bug: %r" % e}, []

    @staticmethod
    def _int(req, key, limit=1 << 64):
        v = req.get(key)
        if type(v) is not int or not 0 <= v < limit:
            raise ProtocolError("%s: %r is not an integer in [0, %#x)" % (key, v, limit))
        return v

    def _reg_off(self, req):
        off = self._int(req, "off", BAR0_SIZE)
        if off % 4:
            raise ProtocolError("off %#x is not 4-byte aligned" % off)
        return ALIASES.get(off, off)

    def _op_open(self, req, fds):
        self._opened = True
        self._cfg[PCI_COMMAND] |= PCI_COMMAND_MEMORY          # as vfio-pci enables the device
        info = dict(vendor=0x8086, device=self.device_id, bar0_size=BAR0_SIZE, irqs=IRQS)
        return info, [self._bar_fd]

    def _op_read32(self, req, fds):
        return dict(v=self._read(self._reg_off(req))), []

    def _op_write32(self, req, fds):
        self._write(self._reg_off(req), self._int(req, "v", 1 << 32))
        return {}, []

    def _cfg_access(self, req):
        size, off = self._int(req, "size", 5), self._int(req, "off", CFG_SIZE)
        if size not in (1, 2, 4) or off + size > CFG_SIZE:
            raise ProtocolError("bad config access at %#x, size %d" % (off, size))
        return off, size

    def _op_cfg_read(self, req, fds):
        off, size = self._cfg_access(req)
        return dict(v=int.from_bytes(self._cfg[off:off + size], "little")), []

    def _op_cfg_write(self, req, fds):
        off, size = self._cfg_access(req)
        v = self._int(req, "v", 1 << (8 * size)).to_bytes(size, "little")
        for i in range(size):           # only COMMAND: I/O, memory, master, SERR#, INTx disable
            if off + i in (PCI_COMMAND, PCI_COMMAND + 1):
                self._cfg[off + i] = v[i] & (0x07 if off + i == PCI_COMMAND else 0x05)
        return {}, []

    def _op_dma_map(self, req, fds):
        iova, size, offset = (self._int(req, k) for k in ("iova", "size", "offset"))
        if len(fds) != 1:
            raise ProtocolError("dma_map needs exactly one fd")
        if iova % PAGE or size % PAGE or offset % PAGE or not size or iova + size > IOVA_LIMIT:
            raise ProtocolError("dma_map iova %#x size %#x offset %#x: not 4 KiB aligned, "
                                "empty or beyond 2^39" % (iova, size, offset))
        if any(iova < m.iova + m.size and m.iova < iova + size for m in self._maps):
            raise ProtocolError("dma_map iova %#x size %#x overlaps a mapping" % (iova, size))
        if os.fstat(fds[0]).st_size < offset + size:
            raise ProtocolError("dma_map: the fd is shorter than offset + size")
        self._maps.append(_Mapping(iova, size, fds[0], offset))    # mmap keeps its own dup
        return {}, []

    def _op_dma_unmap(self, req, fds):
        key = (self._int(req, "iova"), self._int(req, "size"))
        for m in self._maps:
            if (m.iova, m.size) == key:
                self._maps.remove(m)
                m.close()
                return {}, []
        raise ProtocolError("dma_unmap iova %#x size %#x: no such mapping" % key)

    def _op_set_irqs(self, req, fds):
        start, count = self._int(req, "start", IRQS), self._int(req, "count", IRQS + 1)
        if start + count > IRQS or len(fds) != count:
            raise ProtocolError("set_irqs start %d count %d with %d fds" % (start, count, len(fds)))
        if count == 0:
            self._close_irqs()
        for vec in range(start, start + count):
            if vec in self._irqs:
                os.close(self._irqs[vec])
            self._irqs[vec] = fds.pop(0)
        return {}, []

    def _op_reset(self, req, fds):
        self._reset()
        return {}, []

    def _op_close(self, req, fds):
        self._closing = True
        return {}, []

    def _close_irqs(self):
        for fd in self._irqs.values():
            os.close(fd)
        self._irqs = {}

    def _detach(self):
        """The client closed or went away: reset, drop its DMA mappings and eventfds."""
        self._opened = self._closing = False
        self._power_on()
        for m in self._maps:
            m.close()
        self._maps = []
        self._close_irqs()
