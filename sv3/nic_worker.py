"""Program: serves one uplink port (`--uplink KIND:TARGET`).

Forked by the master (sv3/ports.py) like a guest port's worker, and the
same to the rest of the switch: rings to every other port, snapshots, MAC
reports (sv3/worker.py).  Only the device differs: an AF_PACKET socket
on a Linux interface (sv3/uplink/afpacket.py, C in afpacket.c).  Its
process name is sv3-uplink-<id>.  Writes what every worker writes, plus
the link state into struct sv3_afp.  It exits when the master says stop
or goes away, and when its interface disappears (the master starts it
again)."""
import argparse
import errno
import logging
import os
import sys

from . import ipc, states
from ._native import ffi, lib
from .fdb import fmt_mac
from .uplink import afpacket, parse
from .worker import DataWorker, add_common_args, start

STATS_EVERY_S = 1.0


class InterfaceGone(Exception):
    pass


class NicWorker(DataWorker):
    def __init__(self, args):
        super().__init__(args, lib.SV3_KIND_AF_PACKET)
        self.uplink = parse(args.uplink)
        self.name = "uplink %s (port %d)" % (self.uplink, args.port_id)
        self.dev = afpacket.AfPacket(self.uplink.target)
        self.monitor = afpacket.LinkMonitor(self.dev.ifindex)
        self.port.afp = self.dev.afp
        self.next_stats = 0.0
        self.log.info("%s: interface %s (index %d, MAC %s), promiscuous, link %s", self.name,
                      self.uplink.target, self.dev.ifindex, fmt_mac(self.dev.mac()),
                      "up" if self.dev.afp.link_up else "down")

    def device_state(self):
        if self.dev.afp.link_up:
            return states.ACTIVE, "", 0
        return states.LINK_DOWN, "link of %s is down" % self.uplink.target, 0

    def control_fds(self):
        return [self.monitor.fileno()]

    def device_fds(self):
        return [self.dev.fileno()]     # POLLIN: the kernel filled an RX slot

    def on_fd(self, fd, ev):
        if fd != self.monitor.fileno():
            return
        if self.monitor.events():
            self.set_link(self.link_up())

    def link_up(self):
        try:
            return self.dev.link_up()
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise InterfaceGone("interface %s was removed" % self.uplink.target)
            raise

    def set_link(self, up):
        afp = self.dev.afp
        if bool(afp.link_up) != up:
            afp.link_up = up
            self.log.info("%s: link %s", self.name, "up" if up else "down")

    def sleep_ms(self):
        return 1 if self.dev.afp.tx_queued else 1000   # frames wait for send() to work

    def housekeeping(self, now):
        super().housekeeping(now)
        if now < self.next_stats:
            return
        self.next_stats = now + STATS_EVERY_S
        self.port.ctr.drop_no_buffer += self.dev.kernel_drops()
        afp = self.dev.afp
        if afp.link_up and afp.send_errno:
            self.log.warning("%s: send() failed: %s", self.name, _errno_name(afp.send_errno))
            afp.send_errno = 0
        elif not afp.link_up:
            self.set_link(self.link_up())   # send() saw ENETDOWN, or a missed event

    def close(self):
        super().close()
        self.port.afp = ffi.NULL
        self.monitor.close()
        self.dev.close()


def _errno_name(n):
    return "%s (%s)" % (errno.errorcode.get(n, n), os.strerror(n))


def parse_args(argv):
    ap = argparse.ArgumentParser(description="sv3 uplink worker (started by sv3.master)")
    add_common_args(ap)
    ap.add_argument("--uplink", required=True)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start(args, "sv3-uplink-%d" % args.port_id, "sv3-uplink")
    log = logging.getLogger("sv3.worker")
    try:
        w = NicWorker(args)
    except OSError as e:
        log.error("uplink %s: cannot open: %s", args.uplink, e)
        return 2
    try:
        w.report_state()
        w.run()
    except InterfaceGone as e:
        log.warning("%s: %s; the master will start the uplink again", w.name, e)
        return 3
    except ipc.ChannelClosed:
        log.info("%s: master went away, exiting", w.name)
    finally:
        w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
