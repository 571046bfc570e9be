"""Known-good reference backend for guest tests: dpdk-testpmd with two
``net_vhost`` ports in io forwarding mode.

io forwarding pairs port 0 with port 1 and leaves frames untouched, so two
guests, one on each socket, can talk to each other.  If a guest test fails
against this backend, the test is wrong, not sv3.

    with RefSwitch() as (sock_a, sock_b):
        ...  # attach one guest to each socket

Stdlib only.  testpmd always runs with --no-pci and without hugepages.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from .procs import stop_session

TESTPMD = "dpdk-testpmd"

__all__ = ["RefSwitch", "ensure_testpmd"]


def ensure_testpmd():
    """Return the path of dpdk-testpmd, installing dpdk-dev if it is missing."""
    path = shutil.which(TESTPMD)
    if path:
        return path
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "dpdk-dev"]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)
    path = shutil.which(TESTPMD)
    if not path:
        raise RuntimeError("dpdk-testpmd still missing after installing dpdk-dev")
    return path


class RefSwitch:
    """dpdk-testpmd with two listening net_vhost ports, io forwarding.

    ``with RefSwitch() as (sock0, sock1):`` starts it, waits until both
    sockets exist and yields their paths; leaving the block stops it (SIGINT
    to its pid, 5 s grace, then SIGKILL to its process group) and deletes the
    sockets.  ``queues`` > 1 gives each port that many queue pairs.
    """

    def __init__(self, queues=1, mem_mb=512, start_timeout=30.0, name=None):
        self.queues = int(queues)
        self.mem_mb = int(mem_mb)
        self.start_timeout = start_timeout
        self.dir = None
        self.sockets = None
        self.log_path = None
        self.prefix = name or "sv3ref-%d-%d" % (os.getpid(), int(time.time() * 1000) % 10**8)
        self._proc = None
        self._log = None

    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    def command(self):
        q = self.queues
        args = [
            ensure_testpmd(), "--no-pci", "-n", "1", "--no-huge", "-m", str(self.mem_mb),
            "--file-prefix=" + self.prefix, "--lcores", "(0-%d)@(0)" % q,
        ]
        for i, sock in enumerate(self.sockets):
            args += ["--vdev", "net_vhost%d,iface=%s,queues=%d,client=0" % (i, sock, q)]
        args += [
            "--", "--forward-mode=io", "--auto-start", "--stats-period", "5",
            "--total-num-mbufs=32768", "--nb-cores=%d" % q,
            "--rxq=%d" % q, "--txq=%d" % q,
        ]
        return args

    def start(self):
        if self._proc is not None:
            raise RuntimeError("already started")
        self.dir = tempfile.mkdtemp(prefix="sv3-refswitch-")
        self.sockets = (os.path.join(self.dir, "ref0.sock"),
                        os.path.join(self.dir, "ref1.sock"))
        self.log_path = os.path.join(self.dir, "testpmd.log")
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while not all(os.path.exists(s) for s in self.sockets):
            if self._proc.poll() is not None:
                log = self.log_text()
                self.stop()
                raise RuntimeError("testpmd exited with %s during start-up:\n%s"
                                   % (self._proc.returncode, log[-4000:]))
            if time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise RuntimeError("testpmd sockets did not appear within %.0f s:\n%s"
                                   % (self.start_timeout, log[-4000:]))
            time.sleep(0.1)
        return self.sockets

    def stop(self):
        """Stop testpmd (idempotent) and remove the sockets; keeps the log."""
        p = self._proc
        stop_session(p, signal.SIGINT, whole_group=False)
        if self._log is not None:
            self._log.close()
            self._log = None
        for s in self.sockets or ():
            try:
                os.unlink(s)
            except FileNotFoundError:
                pass
        shutil.rmtree("/var/run/dpdk/" + self.prefix, ignore_errors=True)

    def log_text(self):
        if not self.log_path:
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    @property
    def returncode(self):
        return self._proc.returncode if self._proc else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
