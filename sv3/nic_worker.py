"""Program: serves one uplink port (`--uplink KIND:TARGET`).

Forked by the master (sv3/ports.py) like a guest port's worker, and the
same to the rest of the switch: rings to every other port, snapshots, MAC
reports (sv3/worker.py).  Only the device differs, behind one small
interface (AfPacketDevice, Ixgbe82599Device below): an AF_PACKET socket
on a Linux interface (sv3/uplink/afpacket.py, C in afpacket.c) or an
Intel 82599 through VFIO (sv3/uplink/ixgbe.py, C in ixgbe.c).  Its
process name is sv3-uplink-<id>.  Writes what every worker writes, plus
the device's link state and statistics.  It exits when the master says
stop or goes away, and when its device disappears (the master starts it
again)."""
import argparse
import errno
import logging
import os
import sys

from . import ipc, states
from ._native import ffi, lib
from .fdb import fmt_mac
from .uplink import afpacket, ixgbe, parse
from .worker import DataWorker, add_common_args, drain, start

STATS_EVERY_S = 1.0


class DeviceGone(Exception):
    pass


class AfPacketDevice:
    kind = lib.SV3_KIND_AF_PACKET
    # The kernel gives and takes every offload in virtio-net headers.
    offloads = lib.SV3_ACCEPT_CSUM | lib.SV3_ACCEPT_TSO4 | lib.SV3_ACCEPT_TSO6 | lib.SV3_ACCEPT_ECN

    def __init__(self, target):
        self.target = target
        self.sock = afpacket.AfPacket(target)
        self.monitor = afpacket.LinkMonitor(self.sock.ifindex)
        self.state = self.sock.afp

    def attach(self, port):
        port.afp = self.sock.afp
        port.mtu = self.sock.mtu()          # the interface's, not --mtu

    def describe(self):
        return "interface %s (index %d, MAC %s), promiscuous" % (
            self.target, self.sock.ifindex, fmt_mac(self.sock.mac()))

    def control_fds(self):
        return [self.monitor.fileno()]

    def device_fds(self):
        return [self.sock.fileno()]        # POLLIN: the kernel filled an RX slot

    def link_news(self, fd):
        """The link state if fd brought news of it, else None."""
        return self.read_link() if self.monitor.events() else None

    def read_link(self):
        try:
            return self.sock.link_up()
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise DeviceGone("interface %s was removed" % self.target)
            raise

    def arm(self):
        pass

    def disarm(self):
        pass

    def sleep_ms(self):
        return 1 if self.sock.afp.tx_queued else 1000   # frames wait for send() to work

    def housekeeping(self, ctr):
        """-> a line to log, or None."""
        ctr.drop_no_buffer += self.sock.kernel_drops()
        afp = self.sock.afp
        if afp.send_errno:
            n, afp.send_errno = afp.send_errno, 0
            return "send() failed: %s (%s)" % (errno.errorcode.get(n, n), os.strerror(n))
        return None

    def close(self):
        self.monitor.close()
        self.sock.close()


class Ixgbe82599Device:
    kind = lib.SV3_KIND_IXGBE
    offloads = 0            # no TX offloads programmed, no RX metadata

    def __init__(self, target):
        self.target = target
        self.nic = ixgbe.Ixgbe82599(target)
        self.nic.init()
        self.state = self.nic.nic

    def attach(self, port):
        port.nic = self.nic.nic
        port.mtu = min(port.mtu, 1500)      # no jumbo frames: 2 KiB buffers

    def describe(self):
        return "%s at %s, promiscuous, %s" % (
            self.nic.model, self.target,
            "link up at " + self.nic.link_speed() if self.state.link_up else "link down")

    def control_fds(self):
        return [self.nic.irq_fds[1]]       # vector 1: link status change

    def device_fds(self):
        return [self.nic.irq_fds[0]]       # vector 0: queue 0 RX/TX, armed before sleeping

    def link_news(self, fd):
        drain(fd)
        if fd == self.nic.irq_fds[1]:
            self.nic.take_misc_causes()
            return self.read_link()
        return None

    def read_link(self):
        return self.nic.link_up()

    def arm(self):
        self.nic.arm()

    def disarm(self):
        self.nic.disarm()

    def sleep_ms(self):
        return 1000

    def housekeeping(self, ctr):
        if self.nic.was_reset():
            self.nic.init()
            return "the device was reset (CTRL_EXT.DRV_LOAD clear): initialised it again"
        self.nic.fold_stats(ctr)
        return None

    def close(self):
        self.nic.shutdown()
        self.nic.close()


DEVICES = {"af_packet": AfPacketDevice, "vfio": Ixgbe82599Device}


class NicWorker(DataWorker):
    def __init__(self, args, uplink, dev):
        super().__init__(args, dev.kind)
        self.uplink, self.dev = uplink, dev
        self.name = "uplink %s (port %d)" % (uplink, args.port_id)
        dev.attach(self.port)
        self.port.host_offloads = self.port.guest_offloads = dev.offloads
        self.next_stats = 0.0
        self.log.info("%s: %s, link %s", self.name, dev.describe(),
                      "up" if dev.state.link_up else "down")

    def device_state(self):
        if self.dev.state.link_up:
            return states.ACTIVE, "", 0
        return states.LINK_DOWN, "link of %s is down" % self.uplink.target, 0

    def control_fds(self):
        return self.dev.control_fds()

    def device_fds(self):
        return self.dev.device_fds()

    def on_fd(self, fd, ev):
        up = self.dev.link_news(fd)
        if up is not None:
            self.set_link(up)

    def set_link(self, up):
        if bool(self.dev.state.link_up) != up:
            self.dev.state.link_up = up
            self.log.info("%s: link %s", self.name, "up" if up else "down")

    def sleep_ms(self):
        return self.dev.sleep_ms()

    def sleep(self):
        self.dev.arm()
        super().sleep()
        self.dev.disarm()

    def housekeeping(self, now):
        super().housekeeping(now)
        if now < self.next_stats:
            return
        self.next_stats = now + STATS_EVERY_S
        news = self.dev.housekeeping(self.port.ctr)
        if news:
            self.log.warning("%s: %s", self.name, news)
        self.set_link(self.dev.read_link())     # a missed event, or send() saw ENETDOWN

    def close(self):
        super().close()
        self.port.afp = self.port.nic = ffi.NULL
        self.dev.close()


def parse_args(argv):
    ap = argparse.ArgumentParser(description="sv3 uplink worker (started by sv3.master)")
    add_common_args(ap)
    ap.add_argument("--uplink", required=True)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start(args, "sv3-uplink-%d" % args.port_id, "sv3-uplink")
    log = logging.getLogger("sv3.worker")
    uplink = parse(args.uplink)
    try:
        dev = DEVICES[uplink.kind](uplink.target)
    except Exception as e:   # OSError, VfioError, DeviceError: all say what is wrong
        log.error("uplink %s: cannot start: %s", uplink, e)
        return 2
    w = NicWorker(args, uplink, dev)
    try:
        w.report_state()
        w.run()
    except DeviceGone as e:
        log.warning("%s: %s; the master will start the uplink again", w.name, e)
        return 3
    except ipc.ChannelClosed:
        log.info("%s: master went away, exiting", w.name)
    finally:
        w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
