"""Run a private sv3 switch for a test: its own socket in a temp dir, its
own shm instance prefix (read from the master's banner), stopped by its PID."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Switch:
    def __init__(self, *extra_args, cpu=None, netns=None, env=None):
        self.dir = tempfile.mkdtemp(prefix="sv3test.")
        self.socket = os.path.join(self.dir, "sv3")
        self.logpath = os.path.join(self.dir, "master.log")
        self.extra = list(extra_args)
        self.cpu = cpu
        self.netns = netns          # run the master inside this network namespace
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.instance = None

    def start(self, timeout=15):
        cmd = [sys.executable, "-m", "sv3.master", "--socket", self.socket] + self.extra
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu)] + cmd
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        self.logf = open(self.logpath, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"instance (sv3\.\d+\.[0-9a-f]+)", self.log())
            if m and os.path.exists(self.socket + ".ctl"):
                self.instance = m.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("switch did not start:\n" + self.log())

    def log(self):
        with open(self.logpath) as f:
            return f.read()

    def ctl(self, cmd, *opts):
        out = subprocess.run([sys.executable, "-m", "sv3.ctl", "--socket", self.socket, "--json", cmd, *opts],
                             capture_output=True, text=True, timeout=10, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def ports(self, include_gone=False):
        return self.ctl("ports", *(["--all"] if include_gone else []))

    def fdb(self):
        return self.ctl("fdb")

    def wait_ports(self, pred, timeout=60, what="ports", include_gone=False):
        deadline = time.monotonic() + timeout
        while True:
            ports = self.ports(include_gone)
            if pred(ports):
                return ports
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s: %s\n%s" % (what, ports, self.log()[-3000:]))
            time.sleep(0.2)

    def watch(self, guests, period=0.5):
        """Sample sv3.ctl ports until every guest has exited; returns the
        last row seen of each port, keyed by its first MAC (or port id)."""
        last = {}
        while any(g.running for g in guests):
            for row in self.ports():
                last[row["macs"][0] if row["macs"] else row["port"]] = row
            time.sleep(period)
        return last

    def worker_pids(self):
        """Direct children of the master (its workers)."""
        pids = []
        for task in os.listdir("/proc/%d/task" % self.proc.pid):
            try:
                with open("/proc/%d/task/%s/children" % (self.proc.pid, task)) as f:
                    pids += [int(x) for x in f.read().split()]
            except FileNotFoundError:
                pass
        return pids

    def shm_segments(self):
        return [n for n in os.listdir("/dev/shm") if self.instance and n.startswith(self.instance)]

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()
        return self.proc.returncode


@pytest.fixture
def switch(request):
    """A started switch; extra master args via @pytest.mark.switch_args(...)."""
    marker = request.node.get_closest_marker("switch_args")
    sw = Switch(*(marker.args if marker else ()))
    sw.start()
    yield sw
    sw.stop()
