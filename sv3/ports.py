"""The master's table of ports: worker processes, their channels, doorbells,
counter blocks and the full mesh of SPSC rings between them.

Owned by the master.  A port's kind (a guest, or an uplink) matters only
to the function its forked worker runs: rings, peers, snapshots and
counters are the same for every kind, so the forwarding code never knows."""
import collections
import gc
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback

from . import ipc, states
from ._native import ffi
from .fdb import fmt_mac
from .shm import names, ring
from .shm.segment import Segment

log = logging.getLogger("sv3.master")

COUNTERS = [name for name, _ in ffi.typeof("struct sv3_counters").fields]
DROP_COUNTERS = [c for c in COUNTERS if c.startswith("drop_")]
HW_COUNTERS = [c for c in COUNTERS if c.startswith("hw_")]   # a NIC's own statistics
GONE_KEPT = 32           # detached ports whose final counters sv3.ctl still shows


class Worker:
    """A worker forked by the master: the subset of subprocess.Popen that
    the table uses (poll, wait, kill, returncode < 0 for a signal)."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("port worker %d" % self.pid, timeout)
            time.sleep(0.002)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class Port:
    def __init__(self, port_id, guest_pid, kind, label):
        self.id = port_id
        self.guest_pid = guest_pid
        self.kind = kind             # "guest", or an uplink kind (sv3/uplink)
        self.label = label           # an uplink's spec, "af_packet:eth1"
        self.started_at, self.retry_delay = 0.0, 1.0   # uplinks: for the restart back-off
        self.state = states.NEGOTIATING
        self.features = 0
        self.macs_seen = set()
        self.proc = self.chan = self.pidfd = self.block = None
        self.doorbell = -1
        self.ring_drops_gone = 0     # drop_ring_full of rings from detached ports

    def who(self):
        """What the port connects, for log lines."""
        return "uplink " + self.label if self.label else "guest pid %d" % self.guest_pid

    def send(self, obj, fds=()):
        """Never blocks the master: a worker that stopped reading its
        channel (hung, stopped) is killed; its pidfd then removes the port."""
        try:
            ipc.send(self.chan, obj, fds)
        except BlockingIOError:
            if self.proc.poll() is None:
                log.warning("port %d: worker %d does not read its channel; killing it",
                            self.id, self.proc.pid)
                self.proc.kill()
        except OSError:
            pass            # the worker is gone; its pidfd will tell the master

    def counters(self):
        ctr = self.block.cast("struct sv3_counters *")
        return {name: getattr(ctr, name) for name in COUNTERS}


class PortTable:
    def __init__(self, instance, ring_bytes):
        self.instance = instance
        self.ring_bytes = ring_bytes
        self.by_id = {}
        self.rings = {}          # (src, dst) -> Segment
        self.gone = collections.deque(maxlen=GONE_KEPT)
        self.next_id = 1

    def add(self, worker_main, conn=None, guest_pid=0, kind="guest", label=""):
        """A new port (a guest's connection conn, or an uplink): its counters
        block, channel and doorbell, a forked worker running
        worker_main(port, (chan, doorbell[, conn])), and rings to every
        other port."""
        port = Port(self.next_id, guest_pid, kind, label)
        self.next_id += 1
        size = -(-ffi.sizeof("struct sv3_counters") // 4096) * 4096
        port.block = Segment(names.port_block(self.instance, port.id), size, create=True)
        chan_child = None
        try:
            port.chan, chan_child = ipc.pair()
            port.chan.setblocking(False)
            port.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            fds = (chan_child.fileno(), port.doorbell) + ((conn.fileno(),) if conn else ())
            port.proc = Worker(self._fork(lambda: worker_main(port, fds), fds))
            port.pidfd = os.pidfd_open(port.proc.pid)
        except BaseException:
            self._release(port)
            raise
        finally:
            if chan_child is not None:
                chan_child.close()
        for peer in list(self.by_id.values()):
            self._link(port, peer)
        self.by_id[port.id] = port
        return port

    def _fork(self, run, keep_fds):
        """Fork a worker.  The child shares the master's imported code
        (copy on write: a few MiB per worker, started in milliseconds),
        keeps only stdio and keep_fds, and never returns into master code."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            gc.freeze()              # master objects are never finalized here
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _keep_only(keep_fds)
            code = run()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def _link(self, a, b):
        """Create the two rings between a and b and introduce them."""
        ab = names.ring(self.instance, a.id, b.id)
        ba = names.ring(self.instance, b.id, a.id)
        self.rings[(a.id, b.id)] = ring.create(ab, self.ring_bytes)
        self.rings[(b.id, a.id)] = ring.create(ba, self.ring_bytes)
        a.send({"t": "peer_add", "port": b.id, "out": ab, "in": ba}, [b.doorbell])
        b.send({"t": "peer_add", "port": a.id, "out": ba, "in": ab}, [a.doorbell])

    def remove(self, port, fdb):
        """Withdraw a port: peers first, then its worker, then its memory.
        Its final counters stay visible to `sv3.ctl ports --all`."""
        del self.by_id[port.id]
        for peer in self.by_id.values():
            peer.send({"t": "peer_del", "port": port.id})
        status = self._reap(port, timeout=2.0)
        final = self.row(port, fdb)
        final["state"] = states.GONE
        self.gone.append(final)
        for key in [k for k in self.rings if port.id in k]:
            seg = self.rings.pop(key)
            if key[1] in self.by_id:     # its drops stay counted on the receiver
                self.by_id[key[1]].ring_drops_gone += ring_drops_of(seg)
            seg.unlink()
            seg.close()
        self._release(port)
        return status

    def _reap(self, port, timeout):
        proc = port.proc
        if proc is None:
            return "not started"
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rc = proc.returncode
        if rc >= 0:
            return "exit %d" % rc
        why = " (guest memory became inaccessible: its memory file was truncated?)" \
            if -rc == signal.SIGBUS else ""
        return "killed by %s%s" % (signal.Signals(-rc).name, why)

    def _release(self, port):
        for fd in (port.pidfd, port.doorbell):
            if fd is not None and fd >= 0:
                os.close(fd)
        port.pidfd, port.doorbell = None, -1
        if port.chan is not None:
            port.chan.close()
        if port.block is not None:
            port.block.unlink()
            port.block.close()
            port.block = None

    def stop_all(self, timeout, fdb):
        """Workers were told to stop; wait for them, then kill stragglers."""
        deadline = time.monotonic() + timeout
        for port in list(self.by_id.values()):
            left = max(0.0, deadline - time.monotonic())
            if port.proc.poll() is None:
                select.select([port.pidfd], [], [], left)
            if port.proc.poll() is None:
                log.warning("port %d: worker %d did not stop, killing it", port.id, port.proc.pid)
                port.proc.send_signal(signal.SIGKILL)
        for port in list(self.by_id.values()):
            self.remove(port, fdb)

    def rows(self, fdb, include_gone=False):
        rows = [self.row(port, fdb) for port in self.by_id.values()]
        return list(self.gone) + rows if include_gone else rows

    def row(self, port, fdb):
        c = port.counters()
        c["drop_ring_full"] = port.ring_drops_gone + sum(
            ring_drops_of(seg) for (_, dst), seg in self.rings.items() if dst == port.id)
        return {
            "port": port.id, "kind": port.kind, "uplink": port.label, "pid": port.guest_pid,
            "worker_pid": port.proc.pid, "state": port.state,
            "features": "0x%x" % port.features,
            "macs": [fmt_mac(m) for m in fdb.macs_of(port.id)],
            "rx_frames": c["rx_frames"], "rx_bytes": c["rx_bytes"],
            "tx_frames": c["tx_frames"], "tx_bytes": c["tx_bytes"],
            "flood_frames": c["flood_frames"],
            "drops": sum(c[k] for k in DROP_COUNTERS) + c["drop_ring_full"],
            "drop_detail": {k: c[k] for k in DROP_COUNTERS + ["drop_ring_full"] if c[k]},
            "breaths": c["breaths"], "wakeups": c["wakeups"], "yields": c["yields"],
            "offload_frames": c["offload_frames"],
            "sw_checksummed": c["sw_checksummed"], "sw_segmented": c["sw_segmented"],
            "hw": {k[3:]: c[k] for k in HW_COUNTERS} if port.kind == "vfio" else {},
        }


def ring_drops_of(seg):
    return seg.cast("struct sv3_ring *").drops


def _keep_only(fds):
    """Close every fd but stdio and fds; stdin becomes /dev/null."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    low = 3
    for fd in sorted(set(fds)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
