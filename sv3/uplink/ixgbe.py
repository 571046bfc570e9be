"""Intel 82599 10 GbE uplink: the control path of sv3's userspace driver.

Runs in the uplink's worker (sv3/nic_worker.py).  It checks the device,
maps its DMA memory, resets and initialises it in the datasheet's order
(Intel 82599 datasheet, 331520, section 4.6 "Software initialization"),
brings the link up, watches it, folds the clear-on-read statistics into
the port's counters and notices a device that was reset behind its back.
Frames move in C (ixgbe.c) through struct sv3_ixgbe.  Queue 0 only,
promiscuous, no RSS, RSC, TSO, VLAN filtering or jumbo frames.
Register names and bits follow the datasheet (section numbers given)
and Linux's ixgbe_type.h.  The device comes from vfio.py: vfio-pci, or
the device model the tests use."""
import logging
import os
import time

from .._native import ffi
from .vfio import DmaMemory, VfioError, open_device

log = logging.getLogger("sv3.worker")

# PCI IDs of the 82599 physical functions (one programming model).
DEVICE_IDS = {
    0x10F7: "KX4", 0x10F8: "combo backplane", 0x10F9: "CX4", 0x10FB: "SFP+", 0x10FC: "XAUI LOM",
    0x1507: "SFP EM", 0x1514: "KX4 mezzanine", 0x1517: "KR", 0x151C: "10GBASE-T (T3 LOM)",
    0x1529: "SFP FCoE", 0x152A: "backplane FCoE", 0x154A: "SFP SF QP", 0x154D: "SFP SF2",
    0x154F: "LS", 0x1557: "82599EN SFP", 0x1558: "QSFP SF QP",
}
VIRTUAL_FUNCTIONS = {0x10ED, 0x152E}
INTEL = 0x8086
PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_COMMAND = 0x00, 0x02, 0x04
PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 1 << 1, 1 << 2

# -- registers (datasheet 8.2.3) ----------------------------------------------
CTRL, STATUS, CTRL_EXT = 0x00000, 0x00008, 0x00018            # 8.2.3.1
CTRL_MASTER_DISABLE, CTRL_LRST, CTRL_RST = 1 << 2, 1 << 3, 1 << 26
STATUS_GIO_MASTER_ENABLE = 1 << 19
CTRL_EXT_NS_DIS, CTRL_EXT_RO_DIS, CTRL_EXT_DRV_LOAD = 1 << 16, 1 << 17, 1 << 28
EEC, EEC_ARD = 0x10010, 1 << 9                                # 8.2.3.2.1 auto-read done
EICR, EIAC, EITR0 = 0x00800, 0x00810, 0x00820                 # 8.2.3.5
EIMS, EIMC, EIAM, GPIE = 0x00880, 0x00888, 0x00890, 0x00898
GPIE_MULTIPLE_MSIX, GPIE_EIAME, GPIE_PBA_SUPPORT = 1 << 4, 1 << 30, 1 << 31
IVAR0, IVAR_MISC, IVAR_VALID = 0x00900, 0x00A00, 0x80
EICR_RTX_QUEUE0, EICR_LSC = 1 << 0, 1 << 20
VECTOR_RXTX, VECTOR_MISC = 0, 1
RDBAL, RDBAH, RDLEN, RDH, RDT, RXDCTL0 = 0x01000, 0x01004, 0x01008, 0x01010, 0x01018, 0x01028
RSCCTL0, SRRCTL0, DCA_RXCTRL0 = 0x0102C, 0x02100, 0x02200    # 8.2.3.8
SRRCTL_BSIZEPKT_SHIFT, SRRCTL_BSIZEHDR_SHIFT = 0, 8
SRRCTL_DESCTYPE_ADV_ONEBUF, SRRCTL_DROP_EN = 1 << 25, 1 << 28
DCA_RXCTRL_CLEAR = 1 << 9 | 1 << 12 | 1 << 13 | 1 << 15       # relaxed ordering off, bit 12 reserved
RDRXCTL = 0x02F00                                             # 8.2.3.8.8
RDRXCTL_CRCSTRIP, RDRXCTL_DMAIDONE, RDRXCTL_RSCACKC, RDRXCTL_FCOE_WRFIX = 1 << 1, 1 << 3, 1 << 25, 1 << 26
RDRXCTL_RSCFRSTSIZE = 0x1F << 17
RXCTRL, RXCTRL_RXEN = 0x03000, 1 << 0
RXDCTL_ENABLE = TXDCTL_ENABLE = 1 << 25
HLREG0 = 0x04240                                              # 8.2.3.22.8
HLREG0_TXCRCEN, HLREG0_RXCRCSTRP, HLREG0_TXPADEN = 1 << 0, 1 << 1, 1 << 10
AUTOC, AUTOC_RESTART_AN = 0x042A0, 1 << 12                    # 8.2.3.22.19
LINKS, LINKS_UP = 0x042A4, 1 << 30                            # 8.2.3.22.20
LINKS_SPEED = {3: "10 Gb/s", 2: "1 Gb/s", 1: "100 Mb/s", 0: "?"}
RTTDCS, RTTDCS_ARBDIS = 0x04900, 1 << 6                       # 8.2.3.10.2
DMATXCTL, DMATXCTL_TE = 0x04A80, 1 << 0
RFCTL, RFCTL_RSC_DIS = 0x05008, 1 << 5
FCTRL, FCTRL_MPE, FCTRL_UPE, FCTRL_BAM = 0x05080, 1 << 8, 1 << 9, 1 << 10
PSRTYPE0, MTQC, TXPBSIZE0 = 0x0EA00, 0x08120, 0x0CC00
TDBAL, TDBAH, TDLEN, TDH, TDT, TXDCTL0 = 0x06000, 0x06004, 0x06008, 0x06010, 0x06018, 0x06028
DCA_TXCTRL0, DCA_TXCTRL_CLEAR = 0x0600C, 1 << 9 | 1 << 11 | 1 << 13   # no relaxed write-back
TDWBAL, TDWBAH, TDWBAL_HEAD_WB_EN = 0x06038, 0x0603C, 1 << 0
TXDCTL_PTHRESH_32, TXDCTL_HTHRESH_1 = 32, 1 << 8
SECRXCTRL, SECRXCTRL_RX_DIS = 0x08D00, 1 << 1                 # 8.2.3.26
SECRXSTAT, SECRXSTAT_SECRX_RDY = 0x08D04, 1 << 0
RAL0, RAH0, RAH_AV = 0x0A200, 0x0A204, 1 << 31
# clear-on-read statistics (8.2.3.23), into struct sv3_counters
GPRC, GPTC, GORCL, GORCH, GOTCL, GOTCH = 0x04074, 0x04080, 0x04088, 0x0408C, 0x04090, 0x04094
MPC0, CRCERRS = 0x03FA0, 0x04000

# -- queue 0 memory ---------------------------------------------------------------
RING_SIZE = 512                       # descriptors per ring (16 bytes each)
BUF_SIZE = 2048                       # one buffer per descriptor: a 1518-byte frame fits
IOVA_BASE = 1 << 32                   # below 2^39, the smallest IOMMU width seen
POLL_S = 0.2                          # bound of every register poll
LINK_WAIT_S = 5.0


class DeviceError(Exception):
    pass


class Ixgbe82599:
    """One 82599 function: its device handle, DMA memory, eventfds and
    struct sv3_ixgbe."""

    def __init__(self, pci):
        self.pci = pci
        self.dev = open_device(pci)
        self.mem = None
        self.irq_fds = []
        try:
            self._identify()
            self._map_memory()
            self.irq_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
            self.dev.set_irqs(self.irq_fds)
        except BaseException:
            self.close()
            raise

    def _identify(self):
        vendor = self.dev.cfg_read(PCI_VENDOR_ID, 2)
        device = self.dev.cfg_read(PCI_DEVICE_ID, 2)
        if vendor != INTEL or device not in DEVICE_IDS:
            why = "a virtual function (its registers differ)" if device in VIRTUAL_FUNCTIONS else \
                "not an Intel 82599"
            raise DeviceError("%s is %04x:%04x, %s" % (self.pci, vendor, device, why))
        self.model = "82599 %s (%04x)" % (DEVICE_IDS[device], device)

    def _map_memory(self):
        """Rings, the head write-back word and the buffers in one DMA mapping."""
        ring = RING_SIZE * 16
        self.mem = DmaMemory(2 * ring + 4096 + 2 * RING_SIZE * BUF_SIZE, IOVA_BASE)
        self.dev.dma_map(self.mem)
        n = self.nic = ffi.new("struct sv3_ixgbe *")
        base = self.mem.ptr
        self.off = {"rx_ring": 0, "tx_ring": ring, "wb": 2 * ring, "rx_bufs": 2 * ring + 4096,
                    "tx_bufs": 2 * ring + 4096 + RING_SIZE * BUF_SIZE}
        n.bar = self.dev.bar
        n.rx_ring, n.tx_ring = base + self.off["rx_ring"], base + self.off["tx_ring"]
        n.rx_bufs, n.tx_bufs = base + self.off["rx_bufs"], base + self.off["tx_bufs"]
        n.rx_bufs_iova, n.tx_bufs_iova = self.iova("rx_bufs"), self.iova("tx_bufs")
        n.tx_head_wb = ffi.cast("uint32_t *", base + self.off["wb"])
        n.rx_num = n.tx_num = RING_SIZE
        n.buf_size = BUF_SIZE

    def iova(self, what):
        return IOVA_BASE + self.off[what]

    # -- register helpers ---------------------------------------------------------
    def rd(self, reg):
        return self.dev.read32(reg)

    def wr(self, reg, v):
        self.dev.write32(reg, v & 0xFFFFFFFF)

    def set_bits(self, reg, bits):
        self.wr(reg, self.rd(reg) | bits)

    def clear_bits(self, reg, bits):
        self.wr(reg, self.rd(reg) & ~bits)

    def wait_for(self, reg, mask, want, name, timeout=POLL_S):
        """Poll reg until (value & mask) == want; DeviceError naming it if not."""
        deadline = time.monotonic() + timeout
        while (self.rd(reg) & mask) != want:
            if time.monotonic() > deadline:
                raise DeviceError("%s: %s did not become %s within %.0f ms"
                                  % (self.pci, name, "set" if want else "clear", timeout * 1000))
            time.sleep(0.0002)

    # -- initialisation (datasheet 4.6.3 onwards) --------------------------------------
    def init(self):
        self._reset()
        self._interrupts()
        self.set_bits(HLREG0, HLREG0_TXCRCEN | HLREG0_RXCRCSTRP | HLREG0_TXPADEN)
        self.set_bits(FCTRL, FCTRL_UPE | FCTRL_MPE | FCTRL_BAM)    # promiscuous
        self._init_rx()
        self.set_bits(CTRL_EXT, CTRL_EXT_NS_DIS | CTRL_EXT_RO_DIS | CTRL_EXT_DRV_LOAD)
        self._init_tx()
        self.set_bits(AUTOC, AUTOC_RESTART_AN)                     # 4.6.4 link set-up
        self.wr(EICR, 0xFFFFFFFF)
        self.wr(EIMS, EICR_RTX_QUEUE0 | EICR_LSC)
        self.nic.link_up = self._wait_link()

    def _reset(self):
        """4.6.3.2: master disable, then a global reset; wait for the EEPROM
        auto-read and the DMA init, then enable memory and bus mastering."""
        self.wr(EIMC, 0x7FFFFFFF)
        self.set_bits(CTRL, CTRL_MASTER_DISABLE)
        self.wait_for(STATUS, STATUS_GIO_MASTER_ENABLE, 0, "STATUS.GIO_MASTER_ENABLE")
        self.set_bits(CTRL, CTRL_RST | CTRL_LRST)
        time.sleep(0.001)
        self.wait_for(CTRL, CTRL_RST | CTRL_LRST, 0, "CTRL.RST")
        self.wr(EIMC, 0x7FFFFFFF)
        self.wait_for(EEC, EEC_ARD, EEC_ARD, "EEC.ARD (EEPROM auto-read done)")
        self.wait_for(RDRXCTL, RDRXCTL_DMAIDONE, RDRXCTL_DMAIDONE, "RDRXCTL.DMAIDONE")
        cmd = self.dev.cfg_read(PCI_COMMAND, 2)
        self.dev.cfg_write(PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        if not self.rd(RAH0) & RAH_AV:
            log.warning("%s: no valid MAC address in RAL0/RAH0 (the switch does not need one)", self.pci)

    def _interrupts(self):
        """4.6.3.1 / 7.3: MSI-X, vector 0 for queue 0 RX and TX (auto-masked
        when it fires, re-armed before sleeping), vector 1 for the rest."""
        self.wr(GPIE, GPIE_MULTIPLE_MSIX | GPIE_EIAME | GPIE_PBA_SUPPORT)
        self.wr(EITR0, (125 // 2) << 3)                 # about 8000 interrupts/s at most
        self.wr(EIAM, EICR_RTX_QUEUE0)
        self.wr(EIAC, EICR_RTX_QUEUE0)
        self.wr(IVAR0, (VECTOR_RXTX | IVAR_VALID) | (VECTOR_RXTX | IVAR_VALID) << 8)
        self.wr(IVAR_MISC, (VECTOR_MISC | IVAR_VALID) | (VECTOR_MISC | IVAR_VALID) << 8)

    def _init_rx(self):
        """4.6.7: the ring, one advanced buffer per descriptor, no RSC; all
        buffers posted; then RX enabled with the security block paused."""
        n = self.nic
        for i in range(RING_SIZE):
            desc = ffi.cast("uint64_t *", n.rx_ring + 16 * i)
            desc[0], desc[1] = n.rx_bufs_iova + BUF_SIZE * i, 0
        n.rx_next = 0
        self._ring_base(RDBAL, RDBAH, RDLEN, self.iova("rx_ring"))
        self.wr(RDH, 0)
        self.wr(RDT, 0)
        ctl = self.rd(RDRXCTL) | RDRXCTL_CRCSTRIP | RDRXCTL_RSCACKC | RDRXCTL_FCOE_WRFIX
        self.wr(RDRXCTL, ctl & ~RDRXCTL_RSCFRSTSIZE)
        self.wr(SRRCTL0, SRRCTL_DESCTYPE_ADV_ONEBUF | SRRCTL_DROP_EN |
                (BUF_SIZE // 1024) << SRRCTL_BSIZEPKT_SHIFT | 4 << SRRCTL_BSIZEHDR_SHIFT)
        self.wr(PSRTYPE0, 0)
        self.wr(RSCCTL0, 0)
        self.set_bits(RFCTL, RFCTL_RSC_DIS)
        self.wr(RXDCTL0, RXDCTL_ENABLE)
        self.wait_for(RXDCTL0, RXDCTL_ENABLE, RXDCTL_ENABLE, "RXDCTL0.ENABLE")
        self.wr(RDT, RING_SIZE - 1)
        self.set_bits(SECRXCTRL, SECRXCTRL_RX_DIS)
        self.wait_for(SECRXSTAT, SECRXSTAT_SECRX_RDY, SECRXSTAT_SECRX_RDY, "SECRXSTAT.SECRX_RDY")
        self.set_bits(RXCTRL, RXCTRL_RXEN)
        self.clear_bits(SECRXCTRL, SECRXCTRL_RX_DIS)
        self.clear_bits(DCA_RXCTRL0, DCA_RXCTRL_CLEAR)

    def _init_tx(self):
        """4.6.8: DCB off (one packet buffer, arbiter paused while set up),
        the ring with head write-back, then TX on."""
        n = self.nic
        self.clear_bits(DMATXCTL, DMATXCTL_TE)
        self.clear_bits(TXDCTL0, TXDCTL_ENABLE)
        self.set_bits(RTTDCS, RTTDCS_ARBDIS)
        self.wr(MTQC, 0)                               # one queue, no DCB, no VT
        self.wr(TXPBSIZE0, 160 << 10)                  # the whole 160 KB packet buffer
        self.clear_bits(RTTDCS, RTTDCS_ARBDIS)
        n.tx_tail = 0
        n.tx_head_wb[0] = 0
        self._ring_base(TDBAL, TDBAH, TDLEN, self.iova("tx_ring"))
        self.wr(TDH, 0)
        self.wr(TDT, 0)
        wb = self.iova("wb")
        self.wr(TDWBAH, wb >> 32)
        self.wr(TDWBAL, (wb & 0xFFFFFFFC) | TDWBAL_HEAD_WB_EN)
        self.wr(TXDCTL0, TXDCTL_PTHRESH_32 | TXDCTL_HTHRESH_1)
        self.set_bits(DMATXCTL, DMATXCTL_TE)
        self.set_bits(TXDCTL0, TXDCTL_ENABLE)
        self.wait_for(TXDCTL0, TXDCTL_ENABLE, TXDCTL_ENABLE, "TXDCTL0.ENABLE")
        self.clear_bits(DCA_TXCTRL0, DCA_TXCTRL_CLEAR)

    def _ring_base(self, bal, bah, length, iova):
        self.wr(bal, iova & 0xFFFFFFFF)
        self.wr(bah, iova >> 32)
        self.wr(length, RING_SIZE * 16)

    def _wait_link(self):
        deadline = time.monotonic() + LINK_WAIT_S
        while not self.link_up():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    # -- running ------------------------------------------------------------------------
    def link_up(self):
        return bool(self.rd(LINKS) & LINKS_UP)

    def link_speed(self):
        return LINKS_SPEED[(self.rd(LINKS) >> 28) & 3]

    def was_reset(self):
        """A device reset (FLR, power event, a fault) clears DRV_LOAD, which
        only init() sets (8.2.3.1.3)."""
        return not self.rd(CTRL_EXT) & CTRL_EXT_DRV_LOAD

    def take_misc_causes(self):
        """The 'other' causes (link status change) that woke vector 1."""
        causes = self.rd(EICR) & ~0xFFFF
        self.wr(EIMS, EICR_LSC)
        return causes

    def arm(self):
        """Before sleeping: clear queue 0's cause, unmask vector 0."""
        self.wr(EICR, EICR_RTX_QUEUE0)
        self.wr(EIMS, EICR_RTX_QUEUE0)

    def disarm(self):
        self.wr(EIMC, EICR_RTX_QUEUE0)

    def fold_stats(self, ctr):
        """Add the clear-on-read statistics to the port's counters (read the
        low half of a 64-bit byte counter first, 8.2.3.23)."""
        ctr.hw_rx_frames += self.rd(GPRC)
        ctr.hw_tx_frames += self.rd(GPTC)
        ctr.hw_rx_bytes += self.rd(GORCL) | self.rd(GORCH) << 32
        ctr.hw_tx_bytes += self.rd(GOTCL) | self.rd(GOTCH) << 32
        ctr.hw_rx_missed += self.rd(MPC0)
        ctr.hw_crc_errors += self.rd(CRCERRS)

    def shutdown(self):
        """Interrupts masked, RX and TX off, a reset (8.2.3.1.1)."""
        try:
            self.wr(EIMC, 0x7FFFFFFF)
            self.clear_bits(RXCTRL, RXCTRL_RXEN)
            self.clear_bits(DMATXCTL, DMATXCTL_TE)
            self.set_bits(CTRL, CTRL_RST)
        except (OSError, VfioError) as e:
            log.warning("%s: could not quiesce the device: %s", self.pci, e)

    def close(self):
        if self.mem is not None:
            try:
                self.dev.dma_unmap(self.mem)
            except (OSError, VfioError):
                pass
            self.mem.close()
            self.mem = None
        for fd in self.irq_fds:
            os.close(fd)
        self.irq_fds = []
        self.dev.close()
