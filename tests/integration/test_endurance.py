"""Endurance: many attach/detach cycles against one switch; the master's
RSS and fd count stay flat and nothing is left behind.

Every cycle is a full front-end handshake (features, protocol features,
memory table, both vrings started: the port goes ACTIVE) by
tests/helpers/faults.HandshakeClient, then a disconnect; every other
cycle first stops the device (GET_VRING_BASE on both vrings) the way QEMU
does.  Up to WINDOW connections are open at once, so each attach also
creates rings to live peers and each detach unlinks them.

SV3_ENDURANCE_CYCLES sets the number of cycles (default 1000).  Each port
is a worker process forked by the master, so the rate is bounded by
process creation and teardown; the test prints it."""
import os
import time

from tests.helpers.faults import (FD_SLACK, HandshakeClient, fd_count, fd_kinds, full_instance,
                                  instance_processes, port_residue, ports, rss_kib, wait_until)
from tests.helpers.switch import Switch

CYCLES = int(os.environ.get("SV3_ENDURANCE_CYCLES", "1000"))
WARMUP = 20
WINDOW = 3                  # connections open at once
RSS_SLACK_KIB = 1024        # growth allowed over the whole run
SAMPLE_EVERY = 50           # cycles between checks that the newest port is active


def settle(sw):
    """No port left; returns (fds, rss KiB) of the master."""
    wait_until(lambda: ports(sw.socket) == [], 30, "every port to detach")
    time.sleep(0.3)
    return fd_count(sw.proc.pid), rss_kib(sw.proc.pid)


def run_cycles(sw, n, first, open_):
    for i in range(first, first + n):
        c = HandshakeClient(sw.socket).attach()
        open_.append(c)
        if i % SAMPLE_EVERY == 0:
            rows, _ = wait_until(lambda: [r for r in ports(sw.socket) if r["state"] == "active"],
                                 10, "an active port", period=0.02)
            assert len(rows) >= 1
        while len(open_) > WINDOW:
            old = open_.pop(0)
            if i % 2:
                old.stop_device()
            old.close()


def test_attach_detach_cycles_keep_master_flat():
    assert CYCLES > WARMUP, "SV3_ENDURANCE_CYCLES must be more than %d" % WARMUP
    sw = Switch().start()
    sw.instance = full_instance(sw)
    open_ = []
    try:
        pid = sw.proc.pid
        fds_fresh = fd_count(pid)
        run_cycles(sw, WARMUP, 0, open_)
        while open_:
            open_.pop(0).close()
        fds0, rss0 = settle(sw)
        t0 = time.monotonic()
        run_cycles(sw, CYCLES - WARMUP, WARMUP, open_)
        while open_:
            open_.pop(0).close()
        elapsed = time.monotonic() - t0
        fds1, rss1 = settle(sw)
        rate = (CYCLES - WARMUP) / elapsed
        gone = ports(sw.socket, include_gone=True)
        residue = port_residue(pid, sw.instance)
        segs = sw.shm_segments()
        log = sw.log()
        print("endurance: %d cycles (+%d warm-up) in %.1f s = %.1f attach/detach per s; "
              "master fds %d fresh, %d after warm-up, %d at the end; RSS %d KiB -> %d KiB (%+d KiB)"
              % (CYCLES - WARMUP, WARMUP, elapsed, rate, fds_fresh, fds0, fds1, rss0, rss1, rss1 - rss0))
        attached = log.count(" attached: guest pid %d" % os.getpid())
        detached = log.count(" detached (guest pid %d" % os.getpid())
        assert attached == detached == CYCLES, (attached, detached)
        assert fds1 <= fds0 + FD_SLACK and fds1 <= fds_fresh + FD_SLACK, fd_kinds(pid)
        assert not residue, residue
        assert rss1 - rss0 <= RSS_SLACK_KIB, "master RSS grew by %d KiB" % (rss1 - rss0)
        assert segs == [], segs
        assert len(gone) <= 32 and all(r["state"] == "gone" for r in gone)
        assert instance_processes(sw.instance) == []
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
        assert sw.stop() == 0
        assert sw.shm_segments() == [] and not os.path.exists(sw.socket)
    finally:
        for c in open_:
            c.close()
        sw.stop()
