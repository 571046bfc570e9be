"""Program: the sv3 master.  Listens for vhost-user guests, forks one port
worker per connection, owns the MAC table and publishes it as snapshots.

The master is never on the per-frame path: it creates the shared-memory
rings between every pair of ports, tells workers about peers, turns the
workers' MAC reports into snapshots, and serves `python -m sv3.ctl` on
<socket>.ctl.  Writes: the MAC table, ring and counter segments' creation
and removal (never their contents after creation)."""
import argparse
import grp
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time

import posix_ipc

from . import __version__, ipc, nic_worker, port_worker, uplink
from .access import Access
from ._native import BUILD_MODE, lib
from .fdb import DEFAULT_AGE, MacTable, fmt_mac
from .ports import PortTable
from .shm import names
from .shm import snapshot as snap
from .vhost.backend import MTU_RANGE

log = logging.getLogger("sv3.master")
PUBLISH_GAP_S = 0.01     # at most one snapshot per 10 ms
MAX_PORTS = lib.SV3_MAX_PEERS + 1   # every port has a ring to every other
CONTROL_NICE = -5        # the master and handshaking workers, relative to busy workers
UPLINK_RETRY_S = (1.0, 30.0)   # an uplink worker that exits is started again after 1 s .. 30 s
UPLINK_STEADY_S = 60.0   # one that ran this long starts again after the shortest delay


class Master:
    def __init__(self, args):
        self.args = args
        self.instance = names.new_instance()
        self.sel = selectors.DefaultSelector()
        self.access = Access(args.group)
        self.fdb = MacTable(age=args.fdb_age, max_per_port=args.max_macs_per_port)
        self.ports = PortTable(self.instance, args.ring_kib * 1024)
        self.stopping = False
        self.listener = self.ctl = None
        self.published_at, self.publish_due = 0.0, False
        self.uplink_due = {}     # spec -> (monotonic time to start it, retry delay)

    # -- sockets ------------------------------------------------------------
    @staticmethod
    def _listening(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def check_free(self, path):
        """Refuse a live switch; remove stale socket files.  The control
        socket is probed first so a live sv3 never sees a fake port."""
        ctl = path + ".ctl"
        if os.path.exists(ctl) and self._listening(ctl) or \
                os.path.exists(path) and self._listening(path):
            raise SystemExit("sv3: %s is in use by a running switch; stop it first "
                             "or choose another --socket" % path)
        for p in (path, ctl):
            if os.path.exists(p):
                os.unlink(p)

    def listen(self, path):
        s = self.access.bind(path)
        s.listen(16)
        s.setblocking(False)
        return s

    def remove_stale_segments(self):
        """Segments left by masters that were killed (their pid is gone)."""
        stale = names.stale_segments()
        for name in stale:
            try:
                posix_ipc.unlink_shared_memory(name)
            except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
                pass
        if stale:
            log.info("removed %d shared-memory segments of dead sv3 instances", len(stale))

    def start(self):
        self.check_free(self.args.socket)
        self.remove_stale_segments()
        self.listener = self.listen(self.args.socket)
        self.ctl = self.listen(self.args.socket + ".ctl")
        self.sel.register(self.listener, selectors.EVENT_READ, self.on_accept)
        self.sel.register(self.ctl, selectors.EVENT_READ, self.on_ctl)
        log.info("sv3 %s (C core: %s) listening on %s, control on %s.ctl, instance %s",
                 __version__, BUILD_MODE, self.args.socket, self.args.socket, self.instance)
        for up in self.args.uplink:
            self.uplink_due[str(up)] = (0.0, UPLINK_RETRY_S[0])
        self.start_uplinks()

    # -- ports --------------------------------------------------------------
    def on_accept(self, _):
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        guest_pid, uid, gid = self.access.peer(conn)
        if len(self.ports.by_id) >= MAX_PORTS:
            log.warning("refused a connection from pid %d: the switch has its maximum of %d ports",
                        guest_pid, MAX_PORTS)
            conn.close()
            return
        if not self.access.allowed(guest_pid, uid, gid):
            log.warning("refused a connection from pid %d (uid %d, gid %d): not root, not uid %d%s",
                        guest_pid, uid, gid, self.access.uid,
                        ", not in group %s" % self.access.group if self.access.group else "")
            conn.close()
            return
        try:
            port = self.ports.add(self.run_worker, conn, guest_pid)
        except Exception as e:
            log.error("cannot attach a port for pid %d: %s", guest_pid, e)
            conn.close()
            return
        finally:
            conn.close()                   # the worker has its own copy
        log.info("port %d attached: guest pid %d (uid %d), worker pid %d",
                 port.id, guest_pid, uid, port.proc.pid)
        self.watch(port)

    def watch(self, port):
        self.sel.register(port.chan, selectors.EVENT_READ, lambda _, p=port: self.on_worker(p))
        self.sel.register(port.pidfd, selectors.EVENT_READ, lambda _, p=port: self.remove(p, "worker exited"))
        port.send({"t": "snapshot", "data": snap.encode(self.fdb.gen, self.fdb.view())})

    def worker_args(self, port, fds):
        a = self.args
        return ["--chan-fd", str(fds[0]), "--doorbell-fd", str(fds[1]),
                "--port-id", str(port.id), "--instance", self.instance,
                "--batch-size", str(a.batch_size), "--poll-us", str(a.poll_us),
                "--refresh-s", str(max(1.0, a.fdb_age / 4)), "--mtu", str(a.mtu),
                "--data-nice", str(a.data_nice), "--log-level", a.log_level]

    def run_worker(self, port, fds):
        """In the forked child: become port's worker (sv3.port_worker)."""
        return port_worker.main(self.worker_args(port, fds) + [
            "--conn-fd", str(fds[2]), "--guest-pid", str(port.guest_pid)])

    def run_nic_worker(self, port, fds):
        """In the forked child: become the uplink's worker (sv3.nic_worker)."""
        return nic_worker.main(self.worker_args(port, fds) + ["--uplink", port.label])

    # -- uplinks ------------------------------------------------------------
    def start_uplinks(self):
        """Start the uplinks that are due: at start, and again after their
        worker exited (an interface that went away, a crash)."""
        now = time.monotonic()
        for spec, (due, delay) in list(self.uplink_due.items()):
            if due > now or len(self.ports.by_id) >= MAX_PORTS:
                continue
            del self.uplink_due[spec]
            try:
                port = self.ports.add(self.run_nic_worker, kind=spec.split(":")[0], label=spec)
            except Exception as e:
                log.error("uplink %s: cannot start its worker: %s", spec, e)
                self.uplink_due[spec] = (now + delay, min(delay * 2, UPLINK_RETRY_S[1]))
                continue
            port.started_at, port.retry_delay = now, delay
            log.info("port %d: uplink %s, worker pid %d", port.id, spec, port.proc.pid)
            self.watch(port)

    def uplink_exited(self, port):
        if self.stopping:
            return
        ran = time.monotonic() - port.started_at
        delay = UPLINK_RETRY_S[0] if ran >= UPLINK_STEADY_S else min(port.retry_delay * 2, UPLINK_RETRY_S[1])
        self.uplink_due[port.label] = (time.monotonic() + delay, delay)
        log.warning("uplink %s: starting it again in %.0f s", port.label, delay)

    def on_worker(self, port):
        if self.ports.by_id.get(port.id) is not port:
            return                 # removed earlier in this same select() round
        try:
            msg, fds = ipc.recv(port.chan)
        except (ipc.ChannelClosed, OSError):
            self.remove(port, "worker channel closed")
            return
        for fd in fds:
            os.close(fd)
        if msg is None:
            return
        try:
            if msg["t"] == "learn":
                self.on_learn(port, bytes(msg["macs"]))
            elif msg["t"] == "state":
                self.on_state(port, msg)
        except (KeyError, TypeError, ValueError) as e:
            log.error("port %d: malformed message from its worker (%r): removing the port", port.id, e)
            self.remove(port, "malformed worker message")

    def on_learn(self, port, macs):
        changed = False
        for i in range(0, len(macs) - len(macs) % 6, 6):
            mac = macs[i:i + 6]
            if self.fdb.learn(mac, port.id):
                changed = True
                if mac not in port.macs_seen:
                    log.info("port %d (%s): learned MAC %s", port.id, port.who(), fmt_mac(mac))
            port.macs_seen.add(mac)
        if changed:
            self.publish()

    def on_state(self, port, msg):
        port.state, port.features = msg["state"], msg.get("features", 0)
        # A broken port's one ERROR line comes from its worker, which knows the vring.
        log.info("port %d (%s) is %s (features 0x%x)%s", port.id, port.who(),
                 port.state, port.features, ": " + msg["reason"] if msg.get("reason") else "")

    def remove(self, port, why):
        if port.id not in self.ports.by_id:
            return
        for obj in (port.chan, port.pidfd):
            try:
                self.sel.unregister(obj)
            except (KeyError, ValueError):
                pass
        macs = [fmt_mac(m) for m in self.fdb.macs_of(port.id)]
        status = self.ports.remove(port, self.fdb)
        log.info("port %d detached (%s, %s, worker %s), MACs flushed: %s",
                 port.id, port.who(),
                 why, status, ", ".join(macs) or "none")
        if self.fdb.flush_port(port.id):
            self.publish()
        if port.kind != "guest":
            self.uplink_exited(port)

    def publish(self):
        """Send the table now, or once PUBLISH_GAP_S has passed since the
        last send: a storm of new MACs costs at most one snapshot per gap."""
        now = time.monotonic()
        if now - self.published_at < PUBLISH_GAP_S:
            self.publish_due = True
            return
        self.published_at, self.publish_due = now, False
        data = snap.encode(self.fdb.gen, self.fdb.view())
        for port in list(self.ports.by_id.values()):
            port.send({"t": "snapshot", "data": data})

    # -- sv3.ctl ------------------------------------------------------------
    def on_ctl(self, _):
        try:
            conn, _ = self.ctl.accept()
        except BlockingIOError:
            return
        if not self.access.allowed(*self.access.peer(conn)):
            log.warning("refused a control connection from pid %d", self.access.peer(conn)[0])
            conn.close()
            return
        try:
            conn.settimeout(2)
            req = json.loads(conn.recv(4096).decode() or "{}")
            cmd = req.get("cmd")
            if cmd == "ports":
                reply = self.ports.rows(self.fdb, include_gone=bool(req.get("all")))
            elif cmd == "fdb":
                reply = self.fdb.rows()
            else:
                reply = {"error": "unknown command %r" % cmd}
            conn.sendall(json.dumps(reply).encode())
        except (OSError, ValueError) as e:
            log.warning("control request failed: %s", e)
        finally:
            conn.close()

    # -- main loop ------------------------------------------------------------
    def run(self):
        next_age = time.monotonic() + 1
        while not self.stopping:
            timeout = PUBLISH_GAP_S if self.publish_due else 1.0
            if self.uplink_due:
                self.start_uplinks()
                timeout = min(timeout, 0.2)
            for key, _ in self.sel.select(timeout=timeout):
                try:
                    key.data(key.fileobj)
                except Exception:  # a bug must cost one event, never the switch
                    log.exception("internal error while handling %r; continuing", key.fileobj)
                if self.stopping:
                    break
            if self.publish_due:
                self.publish()
            if time.monotonic() >= next_age:
                next_age = time.monotonic() + 1
                if self.fdb.expire():
                    self.publish()

    def shutdown(self):
        log.info("stopping: %d ports", len(self.ports.by_id))
        for port in list(self.ports.by_id.values()):
            port.send({"t": "stop"})
        self.ports.stop_all(3.0, self.fdb)
        for s, suffix in ((self.listener, ""), (self.ctl, ".ctl")):
            if s is not None:
                s.close()
                try:
                    os.unlink(self.args.socket + suffix)
                except FileNotFoundError:
                    pass
        log.info("stopped")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m sv3.master",
        description="sv3: a userspace Ethernet switch for QEMU guests over vhost-user. "
                    "Listens on a unix socket; every vhost-user connection (a QEMU "
                    "virtio-net device or a DPDK virtio-user port) becomes a switch port "
                    "served by its own worker process. Inspect it with python -m sv3.ctl.",
        epilog="Run as root, the master and new ports' handshakes get priority over the "
               "data path (nice -5). "
               "QEMU: -chardev socket,id=c0,path=/tmp/sv3,reconnect=1 -netdev "
               "vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0 (guest RAM must "
               "be a shared memory backend; see contrib/qemu/README.md).")
    ap.add_argument("--socket", default="/tmp/sv3",
                    help="vhost-user socket to listen on (default %(default)s); the control "
                         "socket is <socket>.ctl. A stale socket file is replaced; a live one "
                         "is refused.")
    ap.add_argument("--group", metavar="NAME",
                    help="let members of this group attach guests and use sv3.ctl: the sockets "
                         "get this group (mode 0660 always); default: root and the switch's "
                         "own user only")
    ap.add_argument("--fdb-age", type=_positive(float), default=DEFAULT_AGE, metavar="SECONDS",
                    help="MAC table ageing time (default %(default)s s)")
    ap.add_argument("--max-macs-per-port", type=_positive(int), default=1024, metavar="N",
                    help="MAC addresses one port may own in the table; more are flooded, "
                         "not learned (default %(default)s)")
    ap.add_argument("--poll-us", type=_nonneg_int, default=0, metavar="N",
                    help="spin N microseconds after the last frame before a worker starts "
                         "yielding the CPU, then sleeping (default 0). Helps only when every "
                         "worker has a CPU of its own; see docs/performance.md")
    ap.add_argument("--batch-size", type=_positive(int), default=32, metavar="N",
                    help="frames taken from one source per breath (default %(default)s, max 256)")
    ap.add_argument("--ring-kib", type=_ring_kib, default=512, metavar="KIB",
                    help="bytes of each inter-port shm ring in KiB, a power of two >= 128 "
                         "(default %(default)s); a sender waits while its ring is full, so a "
                         "smaller ring costs rate, not frames. Memory is used as traffic "
                         "touches it")
    ap.add_argument("--mtu", type=_mtu, default=1500, metavar="BYTES",
                    help="largest IP packet a port may send or receive, %d..%d (default "
                         "%%(default)s); bigger frames are dropped and counted. A guest whose "
                         "QEMU sets host_mtu gets that instead; an AF_PACKET uplink uses its "
                         "interface's MTU. TSO frames are not limited" % MTU_RANGE)
    ap.add_argument("--uplink", type=_uplink, action="append", default=[], metavar="KIND:TARGET",
                    help="connect the switch to a network; may be given more than once. "
                         "af_packet:IFACE: a Linux interface (put in promiscuous mode, used "
                         "by sv3 alone: give it no address). vfio:PCI-ADDRESS: an Intel 82599 "
                         "bound to vfio-pci (scripts/vfio-rebind). An uplink whose worker "
                         "stops (the interface went away) is started again. See docs/uplink.md")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    for up in args.uplink:
        if up.kind == "af_packet":
            try:
                socket.if_nametoindex(up.target)
            except OSError:
                ap.error("--uplink %s: no interface %s in this network namespace" % (up, up.target))
    if len({str(u) for u in args.uplink}) != len(args.uplink):
        ap.error("--uplink: the same uplink is given twice")
    if args.group:
        try:
            grp.getgrnam(args.group)
        except KeyError:
            ap.error("--group %s: no such group" % args.group)
    if args.batch_size > 256:
        ap.error("--batch-size must be at most 256")
    return args


def _positive(kind):
    def conv(s):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return v
    return conv


def _mtu(s):
    v = int(s)
    if not MTU_RANGE[0] <= v <= MTU_RANGE[1]:
        raise argparse.ArgumentTypeError("must be %d..%d" % MTU_RANGE)
    return v


def _uplink(s):
    try:
        return uplink.parse(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _ring_kib(s):
    v = int(s)
    if v < 128 or v & (v - 1):
        raise argparse.ArgumentTypeError("must be a power of two >= 128")
    return v


def control_first(data_nice):
    """Run the master (and each new worker until its port is active) at
    CONTROL_NICE below the data path, so that attaching a port or applying
    a snapshot does not wait for every busy worker's time slice.  Needs
    root (CAP_SYS_NICE); without it everything runs at one priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, data_nice + CONTROL_NICE))
    except PermissionError:
        log.info("control path and data path share one priority (raising it needs CAP_SYS_NICE): "
                 "ports attach more slowly while others are busy")


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s sv3-master[%(process)d] %(levelname)s %(message)s")
    args.data_nice = os.getpriority(os.PRIO_PROCESS, 0)
    control_first(args.data_nice)
    m = Master(args)

    def on_signal(signum, _):
        if m.stopping:
            os._exit(1)                    # second signal: leave now
        log.info("signal %d: stopping", signum)
        m.stopping = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wake_r, wake_w = socket.socketpair()   # wakes select() at once on a signal
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    m.sel.register(wake_r, selectors.EVENT_READ, lambda s: s.recv(64))
    try:
        m.start()
        m.run()
    finally:
        m.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
