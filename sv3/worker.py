"""What every data-path worker does, whatever its port's kind: the
channel to the master (snapshots, peers, stop), the rings to its peers,
MAC reports, and the loop around the C core's sv3_port_poll().

Forked by the master (sv3/ports.py).  Subclasses drive one kind of
device: sv3/port_worker.py a guest over vhost-user, sv3/nic_worker.py an
uplink.  Writes: its port's counters block (C core), the producer line of
its outbound rings and the consumer line of its inbound rings."""
import logging
import os
import select
import signal
import socket
import sys
import time

import posix_ipc

from . import ipc, states
from ._native import ffi, lib
from .shm import names, ring
from .shm import snapshot as snap
from .shm.segment import Segment

CONTROL_CHECK_NS = 2_000_000   # a busy worker's C loop polls its control fds every 2 ms
# After the last frame, breaths separated by sched_yield() for this long
# before arming and sleeping: a peer worker on the same core runs without an
# eventfd round trip (about 5 us each).  See docs/performance.md.
YIELD_NS = 50_000
LEARN_GAP_S = 0.001      # at most 1000 learn reports (16 MACs each) per second


class Peer:
    def __init__(self, port_id, out_seg, in_seg, doorbell):
        self.port_id, self.out_seg, self.in_seg, self.doorbell = port_id, out_seg, in_seg, doorbell

    def close(self):
        self.out_seg.close()
        self.in_seg.close()
        os.close(self.doorbell)


class DataWorker:
    """Subclasses set self.name and provide device_state(), control_fds(),
    on_fd(), and may extend device_fds(), sleep_ms(), housekeeping(),
    report() and close()."""
    log = logging.getLogger("sv3.worker")

    def __init__(self, args, kind):
        self.args = args
        self.chan = socket.socket(fileno=args.chan_fd)
        self.chan.setblocking(False)    # a stalled master must never stall frames
        self.doorbell = args.doorbell_fd
        self.port = ffi.new("struct sv3_port *")
        self.port.port_id = args.port_id
        self.port.kind = kind
        self.port.batch = args.batch_size
        self.port.mtu = args.mtu
        # the offload slow path's 256 KiB: not cleared, so untouched pages cost nothing
        self.scratch = ffi.new_allocator(should_clear_after_alloc=False)("uint8_t[]", lib.SV3_SCRATCH_BYTES)
        self.port.scratch = self.scratch
        self.accepts = None      # guest_offloads last written into the inbound rings
        self.block = Segment(names.port_block(args.instance, args.port_id))
        self.port.ctr = self.block.cast("struct sv3_counters *")
        self.peers = {}
        self.fdb_table = None
        self.gen = -1
        self.state = None
        self.learn_sent_at = 0.0
        self.running = True
        self.poller, self.watched = None, None
        self.next_refresh = time.monotonic() + args.refresh_s

    # -- messages from the master -----------------------------------------
    def on_channel(self):
        msg, fds = ipc.recv(self.chan)
        if msg is None:
            return
        t = msg["t"]
        if t == "snapshot":
            self.load_snapshot(msg["data"])
        elif t == "peer_add":
            self.add_peer(msg["port"], msg["out"], msg["in"], fds[0])
            fds = fds[1:]
        elif t == "peer_del":
            self.del_peer(msg["port"])
        elif t == "stop":
            self.running = False
        for fd in fds:
            os.close(fd)

    def load_snapshot(self, data):
        gen, fdb = snap.decode(data)
        if gen <= self.gen:
            return
        tab, mask = snap.build_table(fdb)
        self.port.fdb, self.port.fdb_mask = tab, mask
        self.port.last_src = 0
        self.fdb_table, self.gen = tab, gen

    def add_peer(self, port_id, out_name, in_name, doorbell):
        if port_id in self.peers or len(self.peers) >= lib.SV3_MAX_PEERS:
            os.close(doorbell)
            return
        segs = []
        try:
            for name in (out_name, in_name):
                segs.append(ring.attach(name))
        except (OSError, ValueError, posix_ipc.Error) as e:
            self.log.info("%s: peer port %d left before its rings were attached (%s)", self.name, port_id, e)
            for seg in segs:
                seg.close()
            os.close(doorbell)
            return
        self.peers[port_id] = Peer(port_id, segs[0], segs[1], doorbell)
        self.rebuild_peers()

    def del_peer(self, port_id):
        peer = self.peers.pop(port_id, None)
        if peer:
            self.rebuild_peers()
            peer.close()

    def rebuild_peers(self):
        """Compact struct sv3_port.out/in from self.peers (between breaths)."""
        p = self.port
        for i, peer in enumerate(self.peers.values()):
            lib.sv3_ring_prod_attach(ffi.addressof(p.out[i]), peer.out_seg.cast("struct sv3_ring *"),
                                     peer.doorbell, peer.port_id)
            lib.sv3_ring_cons_attach(ffi.addressof(p.inb[i]),
                                     peer.in_seg.cast("struct sv3_ring *"))
        p.npeers = p.nin = len(self.peers)
        self.accepts = None
        self.publish_accepts()

    def publish_accepts(self):
        """Tell every sender what offload metadata this port takes as it is
        (sv3_ring.accepts, the consumer's line): they complete or segment
        the rest.  Between breaths, whenever it changed."""
        if self.accepts != self.port.guest_offloads:
            self.accepts = self.port.guest_offloads
            for peer in self.peers.values():
                peer.in_seg.cast("struct sv3_ring *").accepts = self.accepts

    # -- reports to the master ---------------------------------------------
    def report(self):
        p = self.port
        if p.nlearn:
            now = time.monotonic()
            if now - self.learn_sent_at >= LEARN_GAP_S:   # a MAC storm: skip, sources recur
                self.learn_sent_at = now
                macs = b"".join(p.learn[i].to_bytes(8, "little")[:6] for i in range(p.nlearn))
                try:
                    ipc.send(self.chan, {"t": "learn", "macs": macs})
                except BlockingIOError:
                    pass            # the master is behind: sources recur, report later
            p.nlearn = 0
        self.publish_accepts()
        self.report_state()

    def report_state(self):
        st, reason, features = self.device_state()
        if st != self.state:
            if st == states.ACTIVE:
                self.become_data_path()
            try:
                ipc.send(self.chan, {"t": "state", "state": st, "reason": reason,
                                     "features": features})
                self.state = st
            except BlockingIOError:
                pass                # the master is behind: retried at the next report

    def become_data_path(self):
        """Set-up ran at the master's (control) priority; frames run at the
        switch's own priority (sv3/master.py control_first)."""
        if os.getpriority(os.PRIO_PROCESS, 0) < self.args.data_nice:
            os.setpriority(os.PRIO_PROCESS, 0, self.args.data_nice)

    # -- the loop -----------------------------------------------------------
    def device_fds(self):
        """Fds that wake a sleeping worker but that the busy C loop does
        not look at (it polls the device itself)."""
        return []

    def watch_fds(self):
        """A poll object for the control and device fds, rebuilt only when
        they changed (a busy worker looks every 2 ms)."""
        control = [self.chan.fileno(), self.doorbell] + self.control_fds()
        fds = control + self.device_fds()
        if fds != self.watched:
            self.poller = select.poll()
            for fd in fds:
                self.poller.register(fd, select.POLLIN)
            for i, fd in enumerate(control):
                self.port.watch_fds[i] = fd
            self.port.nwatch = len(control)
            self.watched = fds
        return self.poller

    def dispatch(self, events):
        for fd, ev in events:
            if fd == self.chan.fileno():
                self.on_channel()
            elif fd == self.doorbell:
                drain(fd)
            else:
                self.on_fd(fd, ev)
        self.report()

    def sleep_ms(self):
        return 1000

    def housekeeping(self, now):
        if now >= self.next_refresh:
            lib.sv3_fdb_clear_hits(self.port)   # active MACs get re-reported
            self.next_refresh = now + self.args.refresh_s

    def run(self):
        spin_ns = self.args.poll_us * 1000
        while self.running:
            self.watch_fds()
            why = lib.sv3_port_poll(self.port, CONTROL_CHECK_NS, spin_ns, YIELD_NS)
            if why == lib.SV3_POLL_REPORT:
                self.report()
            elif why == lib.SV3_POLL_CONTROL:
                events = self.watch_fds().poll(0)
                if events:
                    self.dispatch(events)
                self.housekeeping(time.monotonic())
            else:
                self.sleep()

    def sleep(self):
        """Arm kicks and doorbells, re-check, then sleep in poll()."""
        self.report()
        self.housekeeping(time.monotonic())
        poller = self.watch_fds()
        if lib.sv3_port_arm(self.port):
            lib.sv3_port_disarm(self.port)
            return
        events = poller.poll(self.sleep_ms())
        lib.sv3_port_disarm(self.port)
        self.dispatch(events)

    def close(self):
        for peer in self.peers.values():
            peer.close()
        self.peers.clear()
        self.port.npeers = self.port.nin = 0
        self.port.ctr = ffi.NULL
        self.block.close()


def drain(fd):
    """Read an eventfd's count (a kick or doorbell) so it stops waking us."""
    try:
        os.read(fd, 8)
    except (BlockingIOError, InterruptedError):
        pass


def set_comm(name):
    """The name ps, top and pgrep show (a forked worker's command line is
    the master's); the kernel keeps 15 bytes."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def add_common_args(ap):
    """The options the master passes to every kind of worker."""
    ap.add_argument("--chan-fd", type=int, required=True)
    ap.add_argument("--doorbell-fd", type=int, required=True)
    ap.add_argument("--port-id", type=int, required=True)
    ap.add_argument("--instance", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--poll-us", type=int, default=0)
    ap.add_argument("--data-nice", type=int, default=0)
    ap.add_argument("--refresh-s", type=float, default=75.0)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--log-level", default="info")


def start(args, comm, tag):
    """Logging, process name and signals of a forked worker."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, force=True,
                        format="%(asctime)s " + tag + "[%(process)d] %(levelname)s %(message)s")
    set_comm(comm)
    lib.sv3_set_pdeathsig(signal.SIGTERM)
    # SIGTERM comes from the parent-death signal or supervisord's group kill:
    # leave at once, the kernel releases mappings and fds, the master the shm.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the master decides when we stop
