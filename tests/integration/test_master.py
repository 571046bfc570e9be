"""The master as a process: socket handling, clean stop, worker per port,
and real supervisord running etc/supervisord.conf."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.switch import ROOT, Switch
from tests.helpers.vhost_client import VhostClient


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


def attach_clients(sw, n):
    clients = [VhostClient(sw.socket) for _ in range(n)]
    for c in clients:
        assert c.get_features() & (1 << 32)            # VERSION_1 offered
    ports = sw.wait_ports(lambda ps: len(ps) == n, 10, "%d ports" % n)
    return clients, ports


def test_every_connection_is_a_port_with_its_own_worker(switch):
    clients, ports = attach_clients(switch, 3)
    assert sorted(p["pid"] for p in ports) == [os.getpid()] * 3    # SO_PEERCRED
    workers = {p["worker_pid"] for p in ports}
    assert len(workers) == 3 and workers == set(switch.worker_pids())
    assert len(switch.shm_segments()) == 3 + 3 * 2                 # 3 counter blocks, 6 rings
    clients[1].close()
    ports = switch.wait_ports(lambda ps: len(ps) == 2, 10, "detach")
    assert len(switch.shm_segments()) == 2 + 2
    assert "detached" in switch.log()
    for c in clients:
        c.close()


def test_sigterm_leaves_no_worker_segment_or_socket():
    sw = Switch().start()
    clients, ports = attach_clients(sw, 2)
    workers = [p["worker_pid"] for p in ports]
    assert sw.stop(signal.SIGTERM) == 0
    for pid in workers:
        wait_for(lambda: not pid_alive(pid), 5, "worker %d to exit" % pid)
    assert sw.shm_segments() == []
    assert not os.path.exists(sw.socket) and not os.path.exists(sw.socket + ".ctl")
    for c in clients:
        c.close()


def test_live_socket_is_refused_and_stale_one_replaced(switch):
    second = subprocess.run([sys.executable, "-m", "sv3.master", "--socket", switch.socket],
                            capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert second.returncode != 0 and "in use by a running switch" in second.stderr
    assert switch.ports() == []                       # the first one is untouched
    switch.stop(signal.SIGKILL)                        # leaves a stale socket file
    assert os.path.exists(switch.socket)
    fresh = Switch()
    fresh.socket = switch.socket
    fresh.start()
    try:
        c = VhostClient(fresh.socket)
        assert c.get_features()
        c.close()
    finally:
        fresh.stop()


def test_master_death_takes_workers_along():
    sw = Switch().start()
    clients, ports = attach_clients(sw, 2)
    sw.stop(signal.SIGKILL)
    for p in ports:
        wait_for(lambda: not pid_alive(p["worker_pid"]), 5, "orphan worker to exit")
    for c in clients:
        c.close()
    assert len(sw.shm_segments()) == 4                 # SIGKILL cannot clean up...
    nxt = Switch().start()                             # ...the next master does
    try:
        assert sw.shm_segments() == []
        assert "shared-memory segments of dead sv3 instances" in nxt.log()
    finally:
        nxt.stop()


def test_help_explains_options():
    out = subprocess.run([sys.executable, "-m", "sv3.master", "--help"], capture_output=True,
                         text=True, timeout=20, cwd=ROOT).stdout
    for word in ("--socket", "/tmp/sv3", "--fdb-age", "--poll-us", "vhost-user", "sv3.ctl", "--uplink"):
        assert word in out
    bad = subprocess.run([sys.executable, "-m", "sv3.master", "--batch-size", "0"],
                         capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert bad.returncode == 2 and "must be > 0" in bad.stderr


@pytest.mark.supervisord
def test_supervisord_runs_and_stops_the_switch_cleanly():
    conf = os.path.join(ROOT, "etc", "supervisord.conf")
    venv_bin = os.path.join(ROOT, ".venv", "bin")
    supervisord = os.path.join(venv_bin, "supervisord")
    supervisorctl = os.path.join(venv_bin, "supervisorctl")
    assert os.access(supervisord, os.X_OK), "run scripts/install first (it installs supervisor)"
    assert not os.path.exists("/tmp/sv3"), "/tmp/sv3 is in use; this test needs it free"
    sup = subprocess.Popen([supervisord, "-n", "-c", conf], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    sw = Switch()
    sw.socket = "/tmp/sv3"
    try:
        wait_for(lambda: os.path.exists("/tmp/sv3.ctl"), 20, "the switch under supervisord")
        clients, ports = attach_clients(sw, 2)
        with open("/tmp/sv3-master.log") as f:
            sw.instance = f.read().rsplit("instance ", 1)[1].split()[0]
        assert len(sw.shm_segments()) == 4
        stop = subprocess.run([supervisorctl, "-c", conf, "stop", "sv3-master"],
                              capture_output=True, text=True, timeout=30)
        assert "stopped" in stop.stdout, stop.stdout + stop.stderr
        for p in ports:
            wait_for(lambda: not pid_alive(p["worker_pid"]), 5, "worker to exit")
        assert sw.shm_segments() == []
        assert not os.path.exists("/tmp/sv3") and not os.path.exists("/tmp/sv3.ctl")
        for c in clients:
            c.close()
    finally:
        subprocess.run([supervisorctl, "-c", conf, "shutdown"], capture_output=True, timeout=30)
        try:
            sup.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()
