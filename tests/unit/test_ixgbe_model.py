"""The 82599 device model (tests/fakes/ixgbe_model.py) through its socket
protocol, driven by a minimal VFIO-like client: a BAR0 mmap, a memfd for
DMA memory, descriptors written with struct, RDT/TDT stored in the BAR."""
import json
import mmap
import os
import select
import socket
import struct
import time
import zlib

import pytest

from tests.fakes import ixgbe_model as m
from tests.fakes.wire_host import (ETH_IP4, PROTO_UDP, WireHost, ethernet, inet_sum,
                                   ip4, ipv4_packet, parse_ip, pseudo_sum)

NIC_MAC = bytes.fromhex("020000008299")
PEER_MAC = bytes.fromhex("02aa00000001")
IOVA = 1 << 32                                  # DMA memory: 4 MiB at 4 GiB
RX_RING, TX_RING, HEAD_WB = IOVA, IOVA + 0x10000, IOVA + 0x20000
RX_BUFS, TX_BUFS, MEM_SIZE = IOVA + 0x100000, IOVA + 0x200000, 0x400000
SECRXCTRL_RX_DIS = 1 << 1


def wait_for(cond, timeout=1.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.0005)


def frame_to(dst, n=64, seq=0):
    body = struct.pack("!I", seq) + bytes((seq + i) & 0xFF for i in range(n - 18))
    return ethernet(dst, PEER_MAC, 0x88B5, body)


def udp_packet(src, dst, payload, seed_only=False):
    """IPv4/UDP with a correct checksum, or only the pseudo-header seed a driver leaves for TXSM."""
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    ip = ipv4_packet(ip4(src), ip4(dst), PROTO_UDP, udp)
    seed = pseudo_sum(ip, PROTO_UDP, len(udp))
    csum = seed if seed_only else ~inet_sum(udp, seed) & 0xFFFF
    return ip[:26] + struct.pack("!H", csum) + ip[28:]


def eventfd_fired(fd, timeout=0.5):
    if not select.select([fd], [], [], timeout)[0]:
        return False
    os.eventfd_read(fd)
    return True


class Client:
    """The driver's side: requests, BAR0, DMA memory and a queue-0 driver."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)
        self.mem_fd = os.memfd_create("dma", os.MFD_CLOEXEC)
        os.ftruncate(self.mem_fd, MEM_SIZE)
        self.mem = mmap.mmap(self.mem_fd, MEM_SIZE)
        self.bar = None

    def request(self, fds=(), **req):
        socket.send_fds(self.sock, [json.dumps(req).encode()], list(fds))
        msg, got, _, _ = socket.recv_fds(self.sock, 65536, 4)
        reply = json.loads(msg)
        reply["fds"] = got
        return reply

    def ok(self, fds=(), **req):
        reply = self.request(fds, **req)
        assert reply["ok"], reply
        return reply

    def open(self):
        reply = self.ok(op="open", pci="0000:05:00.0")
        self.bar_mm = mmap.mmap(reply["fds"][0], reply["bar0_size"])
        os.close(reply["fds"][0])
        self.bar = memoryview(self.bar_mm).cast("I")
        self.ok(op="dma_map", iova=IOVA, size=MEM_SIZE, offset=0, fds=[self.mem_fd])
        return reply

    def close(self):
        if self.bar is not None:
            self.bar.release()
            self.bar_mm.close()
        self.sock.close()
        self.mem.close()
        os.close(self.mem_fd)

    def r32(self, off):
        return self.ok(op="read32", off=off)["v"]

    def w32(self, off, v):
        self.ok(op="write32", off=off, v=v & 0xFFFFFFFF)

    def tail(self, off, v):                     # the C data path's direct store
        self.bar[off >> 2] = v

    def q(self, iova, v=None):
        if v is None:
            return struct.unpack_from("<Q", self.mem, iova - IOVA)[0]
        struct.pack_into("<Q", self.mem, iova - IOVA, v)

    def data(self, iova, n):
        return bytes(self.mem[iova - IOVA:iova - IOVA + n])

    # -- a driver for queue 0, in datasheet 4.6 order ---------------------------------
    def reset(self):
        self.w32(m.EIMC, ~0)
        self.w32(m.CTRL, self.r32(m.CTRL) | m.CTRL_MASTER_DISABLE)
        wait_for(lambda: not self.r32(m.STATUS) & m.STATUS_GIO_MASTER_ENABLE)
        self.w32(m.CTRL, self.r32(m.CTRL) | m.CTRL_RST | m.CTRL_LRST)
        wait_for(lambda: not self.r32(m.CTRL) & (m.CTRL_RST | m.CTRL_LRST))
        wait_for(lambda: self.r32(m.EEC) & m.EEC_ARD)

    def bring_up(self, link=True):
        self.reset()
        self.ok(op="cfg_write", off=4, size=2, v=0x7)
        self.w32(m.IVAR0, 0x8080)
        self.w32(m.IVAR_MISC, 0x8181)
        self.w32(m.EIAM, 0x7FFFFFFF)
        self.w32(m.FCTRL, m.FCTRL_UPE | m.FCTRL_MPE | m.FCTRL_BAM)
        self.w32(m.CTRL_EXT, self.r32(m.CTRL_EXT) | m.CTRL_EXT_DRV_LOAD)
        if link:
            self.w32(m.AUTOC, m.AUTOC_AN_RESTART)
            wait_for(lambda: self.r32(m.LINKS) & m.LINKS_UP)

    def init_rx(self, ring=64, bsize_kib=2, drop_en=True, post=True):
        self.rx_ring, self.rx_next, self.rx_tail, self.rx_bufs = ring, 0, 0, {}
        for off, v in ((m.RDBAL, RX_RING & 0xFFFFFFFF), (m.RDBAH, RX_RING >> 32),
                       (m.RDLEN, ring * 16), (m.RDH, 0), (m.RDT, 0)):
            self.w32(off, v)
        self.w32(m.RDRXCTL, self.r32(m.RDRXCTL) | m.RDRXCTL_CRCSTRIP)
        self.w32(m.SRRCTL0, 1 << 25 | (m.SRRCTL_DROP_EN if drop_en else 0) | bsize_kib)
        self.w32(m.RXDCTL0, m.QUEUE_ENABLE)
        wait_for(lambda: self.r32(m.RXDCTL0) & m.QUEUE_ENABLE)
        self.w32(m.SECRXCTRL, SECRXCTRL_RX_DIS)
        wait_for(lambda: self.r32(m.SECRXSTAT) & m.SECRXSTAT_SECRX_RDY)
        self.w32(m.RXCTRL, m.RXCTRL_RXEN)
        self.w32(m.SECRXCTRL, 0)
        if post:
            self.post_rx(range(ring - 1))

    def post_rx(self, bufs):
        """Buffers (4 KiB each from RX_BUFS, by number) into the ring at the tail."""
        for buf in bufs:
            desc = RX_RING + 16 * self.rx_tail
            self.q(desc, RX_BUFS + buf * 0x1000)
            self.q(desc + 8, 0)
            self.rx_bufs[self.rx_tail] = buf
            self.rx_tail = (self.rx_tail + 1) % self.rx_ring
        self.tail(m.RDT, self.rx_tail)

    def rx_desc(self, slot):
        q1 = self.q(RX_RING + 16 * slot + 8)
        return self.q(RX_RING + 16 * slot), q1 & 0xFFFFFFFF, q1 >> 32

    def receive(self):
        """The next complete frame's (data, [status of each descriptor]) and re-post them."""
        data, statuses, bufs = b"", [], []
        while True:
            slot = self.rx_next
            _, status, length = self.rx_desc(slot)
            assert status & m.RXD_DD, "no frame at slot %d" % slot
            bufs.append(self.rx_bufs.pop(slot))
            data += self.data(RX_BUFS + bufs[-1] * 0x1000, length)
            statuses.append(status)
            self.rx_next = (slot + 1) % self.rx_ring
            if status & m.RXD_EOP:
                self.post_rx(bufs)
                return data, statuses

    def init_tx(self, ring=64, head_wb=True):
        self.tx_ring, self.tx_tail = ring, 0
        self.w32(m.DMATXCTL, 0)
        self.w32(m.TXDCTL0, 0)
        for off, v in ((m.TDBAL, TX_RING & 0xFFFFFFFF), (m.TDBAH, TX_RING >> 32),
                       (m.TDLEN, ring * 16), (m.TDH, 0), (m.TDT, 0), (m.TDWBAH, HEAD_WB >> 32),
                       (m.TDWBAL, (HEAD_WB & 0xFFFFFFFF) | 1 if head_wb else 0)):
            self.w32(off, v)
        self.w32(m.DMATXCTL, m.DMATXCTL_TE)
        self.w32(m.TXDCTL0, 32 | 1 << 8 | m.QUEUE_ENABLE)
        wait_for(lambda: self.r32(m.TXDCTL0) & m.QUEUE_ENABLE)

    def tx_desc(self, q0, q1):
        desc = TX_RING + 16 * self.tx_tail
        self.q(desc, q0)
        self.q(desc + 8, q1)
        self.tx_tail = (self.tx_tail + 1) % self.tx_ring
        return desc

    def context(self, maclen, iplen, tucmd):
        self.tx_desc(maclen << 9 | iplen, tucmd << 9 | m.TXD_DTYP_CTXT << 20 | m.TXD_DEXT)

    def queue_frame(self, *fragments, popts=0, paylen=None):
        """Data descriptors for one frame; returns the last descriptor's address."""
        paylen = sum(map(len, fragments)) if paylen is None else paylen
        for i, frag in enumerate(fragments):
            buf = TX_BUFS + 0x1000 * self.tx_tail
            self.mem[buf - IOVA:buf - IOVA + len(frag)] = frag
            dcmd = m.TXD_DEXT | (m.TXD_IFCS | popts if i == 0 else 0)
            dcmd |= m.TXD_EOP | m.TXD_RS if i == len(fragments) - 1 else 0
            last = self.tx_desc(buf, len(frag) | m.TXD_DTYP_DATA << 20 | dcmd | paylen << 46)
        return last

    def head_wb(self):
        return struct.unpack_from("<I", self.mem, HEAD_WB - IOVA)[0]


@pytest.fixture
def model(tmp_path):
    with m.Ixgbe82599Model(str(tmp_path / "ixgbe.sock"), mac=NIC_MAC) as mod:
        yield mod


@pytest.fixture
def dev(model):
    client = Client(model.sock_path)
    client.open()
    yield client
    client.close()


@pytest.fixture
def up(dev, model):
    dev.bring_up()
    dev.init_rx()
    dev.init_tx()
    return dev


def test_open_identity_and_config_space(model, dev):
    assert model.connected
    reply = dev.request(op="open", pci="0000:05:00.0")
    identity = reply["vendor"], reply["device"], reply["bar0_size"], reply["irqs"]
    assert identity == (0x8086, 0x10FB, 0x20000, 2)
    os.close(reply["fds"][0])
    assert dev.ok(op="cfg_read", off=0, size=4)["v"] == 0x10FB8086
    assert dev.ok(op="cfg_read", off=9, size=1)["v"] == 0                # class code 020000
    assert dev.ok(op="cfg_read", off=0xA, size=2)["v"] == 0x0200
    dev.ok(op="cfg_write", off=4, size=2, v=0x6)
    assert dev.ok(op="cfg_read", off=4, size=2)["v"] == 0x6
    mac = dev.bar[m.RAL0 >> 2] | (dev.bar[m.RAH0 >> 2] & 0xFFFF) << 32
    assert mac == int.from_bytes(NIC_MAC, "little")
    assert dev.r32(m.RAH0) & m.RAH_AV and dev.r32(m.STATUS) & m.STATUS_GIO_MASTER_ENABLE
    for bad in (dict(op="read32", off=2), dict(op="read32", off=0x20000), dict(op="frob"),
                dict(op="write32", off=0, v=-1), dict(op="cfg_read", off=255, size=2)):
        assert not dev.request(**bad)["ok"]
    assert model.errors == []


def test_reset_self_clears_and_restores_defaults(model, dev):
    dev.w32(m.CTRL_EXT, m.CTRL_EXT_DRV_LOAD)
    dev.w32(m.EIAM, 0x1234)
    dev.w32(m.HLREG0, 0)
    dev.w32(m.CTRL, m.CTRL_MASTER_DISABLE)
    assert not dev.r32(m.STATUS) & m.STATUS_GIO_MASTER_ENABLE
    start = time.monotonic()
    dev.w32(m.CTRL, m.CTRL_MASTER_DISABLE | m.CTRL_RST)
    ctrl, elapsed = dev.r32(m.CTRL), time.monotonic() - start
    assert ctrl == m.CTRL_RST or elapsed > 0.001, (ctrl, elapsed)  # set for ~1 ms
    wait_for(lambda: dev.r32(m.CTRL) == 0, 0.1)
    wait_for(lambda: dev.r32(m.EEC) & m.EEC_ARD, 0.1)
    assert dev.r32(m.CTRL_EXT) == 0 and dev.r32(m.EIAM) == 0
    assert dev.r32(m.STATUS) & m.STATUS_GIO_MASTER_ENABLE
    assert dev.r32(m.HLREG0) == m.HLREG0_TXCRCEN | m.HLREG0_RXCRCSTRP | m.HLREG0_TXPADEN
    assert dev.r32(m.RDRXCTL) & m.RDRXCTL_DMAIDONE and dev.r32(m.SECRXSTAT) & m.SECRXSTAT_SECRX_RDY
    assert not dev.r32(m.LINKS) & m.LINKS_UP
    for how in (lambda: dev.ok(op="reset"), model.device_reset):
        dev.w32(m.CTRL_EXT, m.CTRL_EXT_DRV_LOAD)
        how()
        assert dev.r32(m.CTRL_EXT) & m.CTRL_EXT_DRV_LOAD == 0
    overlap = dev.request(op="dma_map", iova=IOVA, size=4096, offset=0, fds=[dev.mem_fd])
    assert overlap["ok"] is False and "overlaps" in overlap["error"]
    assert model.dma_mappings() == [(IOVA, MEM_SIZE)]           # resets keep DMA mappings
    assert model.errors == []


def test_eicr_eims_and_clear_on_read(model, dev):
    vec0 = os.eventfd(0, os.EFD_NONBLOCK)
    vec1 = os.eventfd(0, os.EFD_NONBLOCK)
    dev.ok(op="set_irqs", start=0, count=2, fds=[vec0, vec1])
    dev.w32(m.EICS, 0x5)                                 # causes set, all masked: no interrupt
    assert not eventfd_fired(vec0, 0.01)
    dev.w32(m.EICR, 0x1)                                 # write 1 to clear
    assert model.peek(m.EICR) == 0x4
    assert dev.r32(m.EICR) == 0x4 and dev.r32(m.EICR) == 0      # read returns, then clears
    dev.w32(m.EIMS, 0x3)
    dev.w32(m.EIMC, 0x2)
    assert dev.r32(m.EIMS) == 0x1
    dev.w32(m.EIAM, 0x1)
    dev.w32(m.EICS, 0x1)
    assert eventfd_fired(vec0) and dev.r32(m.EIMS) == 0          # fired, then auto-masked
    dev.w32(m.EIMS, 0x1)                                 # pending cause fires when unmasked
    assert eventfd_fired(vec0) and model.irq_counts[0] == 2
    model._count(m.GORCL, 0x1_0000_0005, wide=True)
    model._count(m.GPRC, 7)
    assert (dev.r32(m.GPRC), dev.r32(m.GPRC)) == (7, 0)
    assert (dev.r32(m.GORCL), dev.r32(m.GORCH), dev.r32(m.GORCL)) == (5, 1, 0)
    dev.w32(m.GPTC, 9)                                   # statistics are read-only
    assert dev.r32(m.GPTC) == 0
    os.close(vec0)
    os.close(vec1)


def test_link_up_after_autoc_restart_and_cable(model, dev):
    vec0, vec1 = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    dev.ok(op="set_irqs", start=0, count=2, fds=[vec0, vec1])
    dev.w32(m.EIMS, m.EICR_LSC)
    dev.w32(m.AUTOC, m.AUTOC_AN_RESTART)
    assert dev.r32(m.AUTOC) & m.AUTOC_AN_RESTART == 0
    assert eventfd_fired(vec1)
    assert dev.r32(m.LINKS) & (m.LINKS_UP | m.LINKS_SPEED_10G) == m.LINKS_UP | m.LINKS_SPEED_10G
    assert dev.r32(m.EICR) & m.EICR_LSC and not eventfd_fired(vec0, 0.01)
    dev.w32(m.EIMS, m.EICR_LSC)
    model.set_cable(False)                               # down at once, LSC again
    assert dev.r32(m.LINKS) == 0 and eventfd_fired(vec1, 0.01)
    model.set_cable(True)                                # partner back without a new restart
    assert eventfd_fired(vec1) and dev.r32(m.LINKS) & m.LINKS_UP
    model.device_reset()
    model.set_cable(False)
    model.set_cable(True)
    dev.w32(m.AUTOC, m.AUTOC_AN_RESTART)
    dev.ok(op="reset")                                   # cancels the pending link-up
    time.sleep(0.03)                                     # no restart since the reset: stays down
    assert dev.r32(m.LINKS) == 0
    os.close(vec0)
    os.close(vec1)


def test_rx_frame_descriptor_and_counters(model, up):
    vec0 = os.eventfd(0, os.EFD_NONBLOCK)
    up.ok(op="set_irqs", start=0, count=1, fds=[vec0])
    up.w32(m.EIMS, 1)
    assert up.r32(m.RDT) == 63 and model.peek(m.RDT) == 63
    frame = frame_to(NIC_MAC, 100, seq=1)
    assert model.inject(frame)
    q0, status, length = up.rx_desc(0)
    assert status & (m.RXD_DD | m.RXD_EOP) == m.RXD_DD | m.RXD_EOP and length == 100
    assert up.data(RX_BUFS, 100) == frame and q0 == 0
    assert up.r32(m.RDH) == 1 and eventfd_fired(vec0)
    assert up.r32(m.EICR) & m.EICR_RTX_QUEUE0
    assert (up.r32(m.GPRC), up.r32(m.GORCL), up.r32(m.GORCH)) == (1, 104, 0)
    assert up.r32(m.GPRC) == 0 and model.stats["rx_frames"] == 1
    assert model.errors == []
    os.close(vec0)


def test_rx_ring_wraps_over_hundreds_of_frames(model, up):
    for seq in range(500):
        frame = frame_to(NIC_MAC, 60 + seq % 1400, seq)
        assert model.inject(frame), seq
        data, statuses = up.receive()
        assert data == frame and statuses == [m.RXD_DD | m.RXD_EOP]
    assert up.r32(m.RDH) == 500 % 64 and up.r32(m.GPRC) == 500
    assert model.errors == []


@pytest.mark.parametrize("drop_en", [True, False])
def test_rx_missed_without_descriptors(model, dev, drop_en):
    dev.bring_up()
    dev.init_rx(ring=8, drop_en=drop_en, post=False)
    assert not model.inject(frame_to(NIC_MAC))
    dev.post_rx(range(2))
    assert model.inject(frame_to(NIC_MAC)) and model.inject(frame_to(NIC_MAC))
    assert not model.inject(frame_to(NIC_MAC))
    assert dev.r32(m.MPC0) == 2 and dev.r32(m.QPRDC0) == (2 if drop_en else 0)
    assert dev.r32(m.MPC0) == 0 and dev.r32(m.GPRC) == 2
    assert model.stats["rx_missed"] == 2 and model.errors == []


def test_rx_fctrl_filtering(model, up):
    other, multicast = bytes.fromhex("020000000001"), bytes.fromhex("01005e000001")
    broadcast = b"\xff" * 6
    up.w32(m.FCTRL, 0)
    assert model.inject(frame_to(NIC_MAC)) and up.receive()[0] == frame_to(NIC_MAC)
    for dst in (other, multicast, broadcast):
        assert not model.inject(frame_to(dst))
    assert model.stats["rx_filtered"] == 3 and up.r32(m.GPRC) == 1 and up.r32(m.MPC0) == 0
    for bit, dst in ((m.FCTRL_UPE, other), (m.FCTRL_MPE, multicast), (m.FCTRL_BAM, broadcast)):
        up.w32(m.FCTRL, bit)
        assert model.inject(frame_to(dst)) and up.receive()[0] == frame_to(dst)
    model.set_cable(False)
    assert not model.inject(frame_to(NIC_MAC))                # link down
    assert model.errors == []


def test_rx_multi_buffer_frame_with_fcs(model, dev):
    dev.bring_up()
    dev.w32(m.HLREG0, dev.r32(m.HLREG0) & ~m.HLREG0_RXCRCSTRP)  # keep the FCS; CRCSTRIP stays 0
    dev.init_rx(ring=16, bsize_kib=1)
    dev.w32(m.RDRXCTL, dev.r32(m.RDRXCTL) & ~m.RDRXCTL_CRCSTRIP)
    assert model.errors == ["RX enabled with RDRXCTL.CRCSTRIP != HLREG0.RXCRCSTRP"]
    model.errors.clear()
    frame = frame_to(NIC_MAC, 3000)
    assert model.inject(frame)
    lengths = [dev.rx_desc(i)[2] for i in range(3)]
    data, statuses = dev.receive()
    assert lengths == [1024, 1024, 956] and data == frame + zlib.crc32(frame).to_bytes(4, "little")
    assert statuses == [m.RXD_DD, m.RXD_DD, m.RXD_DD | m.RXD_EOP]
    assert dev.r32(m.RDH) == 3 and dev.r32(m.GORCL) == 3004


def test_rx_checksum_status_and_config_errors(model, dev):
    dev.bring_up()
    dev.w32(m.IVAR0, 0)
    dev.w32(m.SRRCTL0, 0)
    dev.w32(m.RXDCTL0, m.QUEUE_ENABLE)
    dev.w32(m.RXCTRL, m.RXCTRL_RXEN)                     # DESCTYPE 000, no IVAR, no ring
    assert len(model.errors) == 4 and not model.inject(frame_to(NIC_MAC))
    model.device_reset()
    model.errors.clear()
    dev.bring_up()
    dev.init_rx()
    good = ethernet(NIC_MAC, PEER_MAC, ETH_IP4, udp_packet("10.0.0.1", "10.0.0.2", b"abcd"))
    bad = bytearray(good)
    bad[24] ^= 0xFF                                      # IPv4 header checksum
    bad[-1] ^= 0xFF                                      # padding only: L4 still good
    bad[14 + 20 + 8] ^= 0xFF                             # UDP payload
    for frame, want in ((good, m.RXD_IPCS | m.RXD_L4CS), (bytes(bad), m.RXD_IPE | m.RXD_L4E)):
        assert model.inject(frame)
        q0, status, _ = up_desc = dev.rx_desc(dev.rx_next)
        assert q0 == m.PTYPE_IPV4 | m.PTYPE_UDP and status & ~3 == want, up_desc
        dev.receive()
    assert model.errors == []


def test_tx_head_writeback_and_wire(model, up):
    frames = [frame_to(PEER_MAC, 200, 1), frame_to(PEER_MAC, 1514, 2), frame_to(PEER_MAC, 64, 3)]
    up.queue_frame(frames[0])
    up.queue_frame(frames[1][:14], frames[1][14:1000], frames[1][1000:])
    up.queue_frame(frames[2][:40], paylen=40)            # padded to 60 by TXPADEN
    up.tail(m.TDT, up.tx_tail)
    sent = model.wait_sent(3, 1.0)
    assert sent == frames[:2] + [frames[2][:40] + bytes(20)]
    wait_for(lambda: up.head_wb() == 5)
    assert up.r32(m.TDH) == 5 and up.r32(m.EICR) & m.EICR_RTX_QUEUE0
    assert not up.q(TX_RING + 16 * 4 + 8) & m.TXD_STAT_DD      # no DD with head write-back
    assert (up.r32(m.GPTC), up.r32(m.GOTCL)) == (3, 204 + 1518 + 64) and up.r32(m.GPTC) == 0
    assert model.stats["tx_frames"] == 3 and model.sent() == [] and model.errors == []


def test_tx_rs_dd_writeback_and_link_down(model, dev):
    dev.bring_up()
    dev.init_tx(ring=8, head_wb=False)
    for seq in range(20):                                # wraps the 8-slot ring
        last = dev.queue_frame(frame_to(PEER_MAC, 80, seq))
        dev.tail(m.TDT, dev.tx_tail)
        assert model.wait_sent(1, 1.0) == [frame_to(PEER_MAC, 80, seq)]
        wait_for(lambda: dev.q(last + 8) == m.TXD_STAT_DD)
    model.set_cable(False)
    last = dev.queue_frame(frame_to(PEER_MAC, 80))
    dev.tail(m.TDT, dev.tx_tail)
    wait_for(lambda: dev.q(last + 8) == m.TXD_STAT_DD)   # completes, but nothing on the wire
    assert model.sent() == [] and model.stats["tx_link_down"] == 1
    assert dev.r32(m.GPTC) == 20 and model.errors == []


def test_tx_checksum_offloads_and_wire_host(model, up):
    host = WireHost(PEER_MAC, "10.0.0.1")
    vm = WireHost(NIC_MAC, "10.0.0.2")
    ping = bytearray(vm.ping_frame(PEER_MAC, "10.0.0.1", seq=7))
    ping[24:26] = b"\0\0"                                # IXSM fills in the IPv4 checksum
    up.context(14, 20, 1 << 1)
    up.queue_frame(bytes(ping), popts=m.TXD_IXSM)
    udp = udp_packet("10.0.0.2", "10.0.0.1", bytes(range(100)), seed_only=True)
    up.context(14, 20, 1 << 1)                           # TUCMD: IPV4, L4T UDP
    up.queue_frame(ethernet(PEER_MAC, NIC_MAC, ETH_IP4, udp), popts=m.TXD_TXSM)
    up.tail(m.TDT, up.tx_tail)
    wire_ping, wire_udp = model.wait_sent(2, 1.0)
    l3, _, l4, header_ok = parse_ip(wire_udp)
    assert header_ok and inet_sum(l4, pseudo_sum(l3, PROTO_UDP, len(l4))) == 0xFFFF
    [reply] = host.handle(wire_ping)
    assert host.bad_checksums == 0
    assert model.inject(reply)
    data, statuses = up.receive()
    assert data == reply and statuses == [m.RXD_DD | m.RXD_EOP | m.RXD_IPCS]
    assert vm.handle(data) == [] and vm.echo_replies == [(0x5633, 7, b"sv3 wire host ping")]
    [arp_reply] = host.handle(vm.arp_request("10.0.0.1"))
    assert arp_reply[:6] == NIC_MAC and arp_reply[28:32] == ip4("10.0.0.1")
    up.queue_frame(frame_to(PEER_MAC, 100), paylen=99)
    up.tail(m.TDT, up.tx_tail)
    assert len(model.wait_sent(1, 1.0)) == 1
    assert model.errors == ["TX PAYLEN 99 != frame length 100"]


def test_tx_tso_and_bad_descriptors(model, up):
    up.context(14, 20, 1 << 1 | 1 << 2)
    up.queue_frame(frame_to(PEER_MAC, 200), popts=m.TXD_TSE)
    up.tail(m.TDT, up.tx_tail)
    wait_for(lambda: up.head_wb() == 2)                  # completed, but not sent
    assert model.sent() == []
    assert model.errors == ["TSO not modelled (a frame of 200 bytes dropped)"]
    model.errors.clear()
    up.tx_desc(TX_BUFS, 64 | m.TXD_EOP)                  # a legacy descriptor: DEXT clear
    up.queue_frame(frame_to(PEER_MAC))
    up.tail(m.TDT, up.tx_tail)
    wait_for(lambda: model.errors)
    assert model.errors == ["TX queue 0 stopped: TX descriptor 2: DTYP 0x0, DEXT 0 "
                            "(only advanced context and data descriptors)"]
    time.sleep(0.01)
    assert model.sent() == [] and up.r32(m.TDH) == 2


def test_iommu_faults_stop_the_queue_until_reset(model, up):
    up.q(RX_RING + 8 * 0, 0x7000_0000)                   # slot 0: an unmapped buffer
    assert not model.inject(frame_to(NIC_MAC))
    assert len(model.errors) == 1
    assert "RX queue 0 stopped: IOMMU fault: RX buffer at IOVA 0x70000000" in model.errors[0]
    up.q(RX_RING, RX_BUFS)
    assert not model.inject(frame_to(NIC_MAC)) and len(model.errors) == 1     # stopped
    up.tx_desc(0x7000_0000, 64 | m.TXD_DTYP_DATA << 20 | m.TXD_DEXT | m.TXD_EOP | 64 << 46)
    up.tail(m.TDT, up.tx_tail)
    wait_for(lambda: len(model.errors) == 2)
    assert "TX queue 0 stopped: IOMMU fault" in model.errors[1] and model.sent() == []
    model.errors.clear()
    up.ok(op="reset")
    up.bring_up()
    up.init_rx()
    assert model.inject(frame_to(NIC_MAC)) and model.errors == []


def test_dma_map_validation(model, dev):
    for bad in (dict(iova=IOVA + 0x800, size=4096), dict(iova=(1 << 39) - 4096, size=8192),
                dict(iova=IOVA + MEM_SIZE - 4096, size=8192), dict(iova=0, size=4096, offset=0x100),
                dict(iova=0, size=2 * MEM_SIZE)):
        req = dict(dict(op="dma_map", offset=0), **bad)
        assert not dev.request(fds=[dev.mem_fd], **req)["ok"], bad
    assert not dev.request(op="dma_map", iova=0, size=4096, offset=0)["ok"]      # no fd
    dev.ok(op="dma_map", iova=0, size=4096, offset=MEM_SIZE - 4096, fds=[dev.mem_fd])
    assert not dev.request(op="dma_unmap", iova=0, size=8192)["ok"]
    dev.ok(op="dma_unmap", iova=0, size=4096)
    assert model.dma_mappings() == [(IOVA, MEM_SIZE)]


def test_bus_master_and_bad_tails(model, up):
    up.ok(op="cfg_write", off=4, size=2, v=0x2)          # bus master off: no DMA at all
    assert not model.inject(frame_to(NIC_MAC)) and model.stats["rx_missed"] == 0
    up.queue_frame(frame_to(PEER_MAC))
    up.tail(m.TDT, up.tx_tail)
    time.sleep(0.01)
    assert model.sent() == [] and up.r32(m.TDH) == 0
    up.ok(op="cfg_write", off=4, size=2, v=0x6)
    assert len(model.wait_sent(1, 1.0)) == 1
    up.tail(m.TDT, 64)
    up.tail(m.RDT, 99)
    wait_for(lambda: len(model.errors) == 2)
    assert sorted(e.split(":")[1].strip().split()[0] for e in model.errors) == ["RDT", "TDT"]
    model.errors.clear()
    up.ok(op="reset")
    up.bring_up()
    up.init_tx()
    up.w32(m.TDLEN, 128)                                 # ring change while enabled
    assert model.errors == ["TX queue 0 stopped: write to 0x06008 while the queue is enabled"]


def test_second_client_after_close_and_disconnect(model, dev):
    dev.bring_up()
    dev.ok(op="close")
    wait_for(lambda: not model.connected)
    assert model.dma_mappings() == [] and model.peek(m.CTRL_EXT) == 0
    for graceful in (False, True):
        client = Client(model.sock_path)
        assert client.open()["device"] == 0x10FB and model.dma_mappings() == [(IOVA, MEM_SIZE)]
        assert client.r32(m.LINKS) == 0 and client.ok(op="cfg_read", off=4, size=2)["v"] & 4 == 0
        client.bring_up()
        client.init_rx()
        assert model.inject(frame_to(NIC_MAC))
        if graceful:
            client.ok(op="close")
        client.close()
        wait_for(lambda: not model.connected)
        assert model.dma_mappings() == [] and not model.inject(frame_to(NIC_MAC))
    assert model.errors == []
