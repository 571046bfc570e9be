"""Program: serves one guest port (one vhost-user connection).

Forked by the master (sv3/ports.py), never started by hand; its process
name is sv3-port-<id>.  It speaks vhost-user on the inherited connection
fd and runs the C core's vhost breaths (port.c); everything it shares with
the other kinds of worker (peers, snapshots, MAC reports, the loop) is in
sv3/worker.py.  It exits when the guest disconnects, when the master says
stop, or when the master goes away."""
import argparse
import select
import socket
import sys

from . import ipc, states
from ._native import lib
from .vhost.backend import Backend
from .vhost.channel import ConnectionClosed, ProtocolError, recv_message
from .worker import DataWorker, add_common_args, drain, start

BROKEN_REASONS = {
    1: "avail index moved by more than the ring size",
    2: "descriptor head index out of range",
    3: "descriptor next index out of range",
    4: "descriptor chain loops or is longer than the ring",
    5: "buffer address outside guest memory",
    6: "malformed indirect descriptor table",
    7: "descriptor direction (read/write) wrong for the vring",
    8: "descriptor chain has too many buffers",
    9: "receive chain without any room",
}
MESSAGE_TIMEOUT_S = 5.0  # longest wait for the rest of a started vhost-user message


class PortWorker(DataWorker):
    def __init__(self, args):
        super().__init__(args, lib.SV3_KIND_VHOST)
        self.name = "port %d (guest pid %s)" % (args.port_id, args.guest_pid or "?")
        self.conn = socket.socket(fileno=args.conn_fd)
        self.conn.settimeout(MESSAGE_TIMEOUT_S)   # a front-end stalling mid-message
        self.port.hdr_len = 12
        self.backend = Backend(self.conn, self.port, self.name)
        self.broken_reported = False

    def report(self):
        p = self.port
        if p.broken and not self.broken_reported:
            self.broken_reported = True
            reason = BROKEN_REASONS.get(p.broken, "reason %d" % p.broken)
            self.log.error("%s: vring %d broken: %s; port stops until the guest resets the device",
                           self.name, p.broken_vring, reason)
            self.backend.signal_error(p.broken_vring)
        if not p.broken:
            self.broken_reported = False
        super().report()

    def device_state(self):
        p = self.port
        if p.broken:
            return states.BROKEN, BROKEN_REASONS.get(p.broken, ""), self.backend.features
        if p.vr[0].started and p.vr[1].started:
            return states.ACTIVE, "", self.backend.features
        return states.NEGOTIATING, "", self.backend.features

    def control_fds(self):
        return [self.conn.fileno()] + self.backend.kick_fds()

    def on_vhost(self):
        """Every message the front-end has sent so far (a handshake comes
        as a burst; one scheduling round per message would be slow)."""
        for _ in range(64):
            msg = recv_message(self.conn)
            self.log.debug("%s: %s", self.name, msg.name)
            self.backend.handle(msg)
            if not select.select([self.conn], [], [], 0)[0]:
                break

    def dispatch(self, events):
        """The vhost socket comes first: its message may close or replace a
        kick fd, so the eventfds are looked up after it."""
        events = sorted(events, key=lambda e: e[0] != self.conn.fileno())
        super().dispatch(events)

    def on_fd(self, fd, ev):
        if fd == self.conn.fileno():
            self.on_vhost()
        elif fd in self.backend.kick_fds():
            if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                self.log.warning("%s: kick fd %d hung up; polling that vring instead", self.name, fd)
                self.backend.drop_kick(fd)
            else:
                drain(fd)

    def sleep_ms(self):
        """A started vring without a kick fd must be polled (vhost-user
        SET_VRING_KICK bit 8): nap 1 ms instead of sleeping."""
        if any(vr.started and vr.kick_fd < 0 for vr in self.port.vr):
            return 1
        return 1000

    def close(self):
        super().close()
        self.backend.close()


def parse_args(argv):
    ap = argparse.ArgumentParser(description="sv3 port worker (started by sv3.master)")
    add_common_args(ap)
    ap.add_argument("--conn-fd", type=int, required=True)
    ap.add_argument("--guest-pid", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start(args, "sv3-port-%d" % args.port_id, "sv3-port")
    w = PortWorker(args)
    try:
        w.report_state()
        w.run()
    except ConnectionClosed as e:
        w.log.info("%s: guest disconnected (%s)", w.name, e)
    except ProtocolError as e:
        w.log.error("%s: vhost-user protocol error, closing: %s", w.name, e)
    except ipc.ChannelClosed:
        w.log.info("%s: master went away, exiting", w.name)
    finally:
        w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
