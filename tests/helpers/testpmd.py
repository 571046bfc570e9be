"""dpdk-testpmd as a vhost-user traffic generator and as a reference switch.

Standard library only (and tests/helpers/procs.py), so that the pytest
suite, ``scripts/bench`` and ``scripts/profile`` share it.

``LoopGenerator``
    One dpdk-testpmd process with two ``net_virtio_user`` ports (the
    vhost-user frontend side, like QEMU without a guest) that connect to a
    switch.  It runs ``mac`` forwarding with the peers crossed, so after
    ``start tx_first 8`` primes the loop, frames circulate
    port 0 -> switch -> port 1 -> testpmd -> switch -> port 0 ...
    The sum of both ports' Rx-pps is the rate the switch forwards.

``RefSwitch``
    dpdk-testpmd with two listening ``net_vhost`` ports and ``io``
    forwarding: a known-good two-port "switch" with one socket per port.
    If a test fails against it, the test is wrong.

Safety: every process is started with ``--no-pci`` and a unique
``--file-prefix``, in a new session, stdin from /dev/null, output to a log
file, under coreutils ``timeout`` so that it cannot outlive its budget.
It is stopped by PID only (SIGINT, then SIGKILL), and only files this
module created are removed afterwards (socket files, the DPDK runtime
directory and hugepage files of its own file prefix).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

from .procs import interrupt

__all__ = [
    "MAC0",
    "MAC1",
    "TestpmdError",
    "LoopGenerator",
    "port_macs",
    "RefSwitch",
    "RawTestpmd",
    "ensure_hugepages",
    "hugepages_total",
    "parse_rates",
    "parse_totals",
    "strip_ansi",
    "find_testpmd",
]

MAC0 = "02:00:00:00:00:01"
MAC1 = "02:00:00:00:00:02"

HUGEPAGE_MOUNT = "/dev/hugepages"

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PORT_BLOCK_RE = re.compile(r"NIC statistics for port (\d+)")
_RX_PPS_RE = re.compile(r"Rx-pps:\s+(\d+)\s+Rx-bps:\s+\d+[ \t]*\n")
_FWD_HEADER_RE = re.compile(r"Forward statistics for port (\d+)")
_FWD_RX_RE = re.compile(r"RX-packets:\s+(\d+)\s+RX-dropped:\s+(\d+)")
_FWD_TX_RE = re.compile(r"TX-packets:\s+(\d+)\s+TX-dropped:\s+(\d+)")
_STATS_MARK = "Port statistics ="

_counter = itertools.count()


class TestpmdError(RuntimeError):
    """testpmd failed to start, died, or did not reach the expected state."""

    __test__ = False  # not a pytest test class


def find_testpmd() -> str:
    """Path of dpdk-testpmd, installing Debian's dpdk-dev if it is missing."""
    path = shutil.which("dpdk-testpmd")
    if path is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "dpdk-dev"]
        if subprocess.run(cmd, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(cmd, env=env, check=True)
        path = shutil.which("dpdk-testpmd")
    if path is None:
        raise TestpmdError("dpdk-testpmd still missing after installing dpdk-dev")
    return path


def strip_ansi(text: str) -> str:
    """Remove the ANSI clear-screen/cursor sequences testpmd prints."""
    return _ANSI_RE.sub("", text)


def parse_rates(text: str, nports: int = 2) -> list[float]:
    """Per-period forwarded rate in Mpps from testpmd ``--stats-period`` output.

    One value per complete "Port statistics" block: the sum of the Rx-pps
    of ports 0..nports-1.  A block still being written is left out.
    """
    text = strip_ansi(text)
    rates = []
    for block in text.split(_STATS_MARK)[1:]:
        per_port = {}
        parts = _PORT_BLOCK_RE.split(block)
        # parts = [before, port, body, port, body, ...]
        for i in range(1, len(parts) - 1, 2):
            m = _RX_PPS_RE.search(parts[i + 1])
            if m:
                per_port[int(parts[i])] = int(m.group(1))
        if all(p in per_port for p in range(nports)):
            rates.append(sum(per_port[p] for p in range(nports)) / 1e6)
    return rates


def parse_totals(text: str) -> dict[int, dict[str, int]]:
    """Final per-port totals printed when testpmd stops forwarding.

    Returns ``{port: {"rx_packets", "rx_dropped", "tx_packets",
    "tx_dropped"}}``; the "Accumulated" block is not included.  Empty if
    testpmd did not get to print them (e.g. it was killed).
    """
    text = strip_ansi(text)
    totals: dict[int, dict[str, int]] = {}
    parts = _FWD_HEADER_RE.split(text)
    for i in range(1, len(parts) - 1, 2):
        body = parts[i + 1]
        # Stop at the end of this port's block.
        body = body.split("Accumulated forward statistics")[0]
        rx = _FWD_RX_RE.search(body)
        tx = _FWD_TX_RE.search(body)
        if rx and tx:
            totals[int(parts[i])] = {
                "rx_packets": int(rx.group(1)),
                "rx_dropped": int(rx.group(2)),
                "tx_packets": int(tx.group(1)),
                "tx_dropped": int(tx.group(2)),
            }
    return totals


# --------------------------------------------------------------------------
# Hugepages


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def hugepages_total() -> int:
    """HugePages_Total from /proc/meminfo (default-size pages)."""
    return _meminfo("HugePages_Total")


def _hugetlbfs_mounts() -> list[str]:
    mounts = []
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "hugetlbfs":
                mounts.append(fields[1].replace("\\040", " "))
    return mounts


def ensure_hugepages(n: int = 1024, mountpoint: str = HUGEPAGE_MOUNT) -> int:
    """Make sure at least ``n`` default-size hugepages exist and hugetlbfs is mounted.

    Raises /proc/sys/vm/nr_hugepages to ``n`` if it is lower (never lowers
    it) and mounts hugetlbfs on ``mountpoint`` unless some hugetlbfs is
    already mounted there.  Needs root.  Returns HugePages_Total; raises
    TestpmdError if the kernel gave fewer than ``n`` pages.
    """
    if hugepages_total() < n:
        with open("/proc/sys/vm/nr_hugepages", "w") as f:
            f.write(f"{n}\n")
    if mountpoint not in _hugetlbfs_mounts():
        os.makedirs(mountpoint, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "hugetlbfs", "nodev", mountpoint],
            check=True, timeout=30,
        )
    total = hugepages_total()
    if total < n:
        raise TestpmdError(f"asked for {n} hugepages, the kernel gave {total}")
    return total


# --------------------------------------------------------------------------
# Process handling


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (scan of /proc/*/stat)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        # comm may contain spaces and parens: parse after the last ')'.
        fields = data[data.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(name))
    return out


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


class _Testpmd:
    """One dpdk-testpmd process: command line, start, logs, stop, cleanup."""

    kind = "testpmd"

    def __init__(self, *, lcores: str, hugepages: bool, socket_mem: int,
                 no_huge_mem: int, single_file_segments: bool,
                 cpus: str | None, workdir: str | None,
                 file_prefix: str | None, max_seconds: float,
                 testpmd: str | None):
        self.lcores = lcores
        self.hugepages = hugepages
        self.socket_mem = socket_mem
        self.no_huge_mem = no_huge_mem
        self.single_file_segments = single_file_segments
        self.cpus = cpus
        self.max_seconds = max_seconds
        self.testpmd = testpmd or find_testpmd()
        self.file_prefix = file_prefix or (
            f"sv3{self.kind}_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}"
        )
        if workdir is None:
            self.workdir = tempfile.mkdtemp(prefix=f"sv3-{self.kind}-")
            self._own_workdir = True
        else:
            os.makedirs(workdir, exist_ok=True)
            self.workdir = workdir
            self._own_workdir = False
        self.log_path = os.path.join(self.workdir, f"{self.file_prefix}.log")
        self.proc: subprocess.Popen | None = None
        self._pid: int | None = None
        self._totals: dict[int, dict[str, int]] | None = None
        self._log_file = None

    # ---- command line -----------------------------------------------------

    def _vdev_args(self) -> list[str]:
        raise NotImplementedError

    def _app_args(self) -> list[str]:
        raise NotImplementedError

    def _eal_args(self) -> list[str]:
        args = ["--no-pci", "-n", "1", f"--file-prefix={self.file_prefix}",
                "--lcores", self.lcores]
        if self.hugepages:
            args += ["--socket-mem", str(self.socket_mem)]
            if self.single_file_segments:
                args.append("--single-file-segments")
        else:
            args += ["--no-huge", "-m", str(self.no_huge_mem)]
        return args

    def command(self) -> list[str]:
        """The dpdk-testpmd argv (without the timeout/taskset wrappers)."""
        return ([self.testpmd] + self._eal_args() + self._vdev_args()
                + ["--"] + self._app_args())

    def full_command(self) -> list[str]:
        """What is actually executed: timeout [stdbuf] [taskset] testpmd ..."""
        cmd = ["timeout", "-s", "INT", "-k", "10", str(int(self.max_seconds))]
        if shutil.which("stdbuf"):
            cmd += ["stdbuf", "-oL", "-eL"]  # timely stats lines in the log
        if self.cpus is not None:
            cmd += ["taskset", "-c", str(self.cpus)]
        return cmd + self.command()

    # ---- lifecycle --------------------------------------------------------

    def _before_start(self) -> None:
        pass

    def start(self):
        """Start testpmd in a new session; returns self.  Does not wait."""
        if self.proc is not None:
            raise TestpmdError(f"{self.kind} already started")
        self._before_start()
        self._log_file = open(self.log_path, "wb")
        self._log_file.write(
            ("# " + " ".join(self.full_command()) + "\n").encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.full_command(), stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
        self._find_pid()
        return self

    def _find_pid(self, timeout: float = 5.0) -> int | None:
        """PID of testpmd itself: the child that ``timeout`` forked."""
        if self._pid is not None:
            return self._pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = _children(self.proc.pid)
            if kids:
                self._pid = kids[0]
                return self._pid
            if self.proc.poll() is not None:
                return None
            time.sleep(0.01)
        return None

    @property
    def pid(self) -> int | None:
        """PID of the dpdk-testpmd process (not of its timeout wrapper)."""
        return self._pid

    @property
    def wrapper_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """The whole log so far, ANSI sequences removed."""
        try:
            with open(self.log_path, "rb") as f:
                return strip_ansi(f.read().decode(errors="replace"))
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        kept = [line for line in self.log_text().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def _check_alive(self, what: str) -> None:
        if not self.alive():
            rc = self.proc.returncode if self.proc else None
            raise TestpmdError(
                f"{self.kind} exited (rc={rc}) while {what}; log {self.log_path}:\n"
                + self.log_tail())

    def next_rates(self, nports: int, seconds: int, timeout: float | None = None) -> list[float]:
        """The next ``seconds`` complete statistics blocks (``--stats-period
        1``): the sum of ports 0..nports-1's Rx-pps, Mpps.  Raises
        TestpmdError if testpmd dies or they do not come within ``timeout``
        (default seconds + 15)."""
        self._check_alive("measuring rates")
        skip = len(parse_rates(self.log_text(), nports))
        budget = seconds + 15 if timeout is None else timeout
        deadline = time.monotonic() + budget
        while True:
            got = parse_rates(self.log_text(), nports)[skip:]
            if len(got) >= seconds:
                return got[:seconds]
            self._check_alive("measuring rates")
            if time.monotonic() > deadline:
                raise TestpmdError(
                    f"only {len(got)} of {seconds} stats periods in {budget:g} s; "
                    f"log {self.log_path}:\n" + self.log_tail())
            time.sleep(0.2)

    def _wait_for(self, predicate, timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while True:
            self._check_alive(what)
            if predicate(self.log_text()):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TestpmdError(
                    f"{self.kind}: timed out after {timeout:g} s {what}; "
                    f"log {self.log_path}:\n" + self.log_tail())
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> dict[int, dict[str, int]]:
        """SIGINT to testpmd's PID, wait up to ``timeout`` s, then SIGKILL.

        Returns the final per-port totals (see ``parse_totals``); ``{}`` if
        testpmd never printed them.  Idempotent.
        """
        if self.proc is None:
            return {}
        if self._totals is not None:
            return self._totals
        try:
            if self.proc.poll() is None:
                target = self._pid if self._pid is not None else self.proc.pid
                if not interrupt(self.proc, target, timeout):
                    for pid in (self._pid, self.proc.pid):
                        if pid is not None:
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    self.proc.wait(10)
            # testpmd itself may outlive a killed wrapper for a moment.
            if self._pid is not None:
                for _ in range(100):
                    if not os.path.exists(f"/proc/{self._pid}") or \
                            self._zombie_or_gone(self._pid):
                        break
                    time.sleep(0.05)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            self._totals = parse_totals(self.log_text())
            self._cleanup_runtime()
        return self._totals

    @staticmethod
    def _zombie_or_gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            return True
        return data[data.rfind(")") + 2:].split()[0] in ("Z", "X")

    def _cleanup_runtime(self) -> None:
        """Remove the DPDK runtime dir and hugepage files of our own prefix."""
        bases = ["/var/run/dpdk", "/tmp/dpdk"]
        if os.environ.get("XDG_RUNTIME_DIR"):
            bases.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "dpdk"))
        for base in bases:
            d = os.path.join(base, self.file_prefix)
            if os.path.isdir(d):
                shutil.rmtree(d, ignore_errors=True)
        if self.hugepages:
            pat = re.compile(re.escape(self.file_prefix) + r"map_\d+$")
            for mount in _hugetlbfs_mounts():
                try:
                    names = os.listdir(mount)
                except OSError:
                    continue
                for name in names:
                    if pat.match(name):
                        try:
                            os.unlink(os.path.join(mount, name))
                        except OSError:
                            pass

    def close(self) -> None:
        """stop() and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop()
        finally:
            if exc_type is not None and self._own_workdir:
                sys.stderr.write(
                    f"--- {self.kind} log tail ({self.log_path}) ---\n"
                    + self.log_tail() + "\n")
            self.close()
        return False


def port_macs(pairs: int, first: int = 1) -> list[str]:
    """MACs for 2 * pairs generator ports: 02:00:00:00:00:01, ...:02, ..."""
    return [f"02:00:00:00:{(first + i) >> 8:02x}:{(first + i) & 0xff:02x}"
            for i in range(2 * pairs)]


class LoopGenerator(_Testpmd):
    """Loop-mode generator: pairs of virtio-user ports, mac forwarding,
    each port's peer is the other port of its pair (0-1, 2-3, ...).

    ``paths``: one socket path (every port connects to it: ports of one
    switch) or one path per port.  ``macs``: the ports' MACs, an even
    number (default MAC0, MAC1: one pair; see ``port_macs``).
    ``size`` is the frame length without FCS (``--txpkts``).
    ``prime_bursts`` bursts of 32 frames per port start the loop (0: the
    ports come up but send nothing: an idle guest).  The mbuf pool and
    DPDK memory grow with the number of ports unless given.
    ``hugepages=False`` uses ``--no-huge -m 256`` (no setup, about half the
    rate); ``True`` uses ``--socket-mem 128 --single-file-segments`` and
    needs ``ensure_hugepages()`` first.  ``cpus`` optionally wraps testpmd in
    ``taskset -c CPUS``; the lcores themselves are placed by ``lcores``.
    """

    kind = "gen"

    def __init__(self, paths, *, size: int = 64, queues: int = 1,
                 macs=(MAC0, MAC1),
                 queue_size: int = 256, lcores: str | None = None,
                 hugepages: bool = False, socket_mem: int | None = None,
                 no_huge_mem: int = 256, mbufs: int | None = None,
                 prime_bursts: int = 8, cpus: str | None = None,
                 workdir: str | None = None, file_prefix: str | None = None,
                 max_seconds: float = 300, testpmd: str | None = None):
        self.macs = [m.lower() for m in macs]
        if not self.macs or len(self.macs) % 2:
            raise ValueError("LoopGenerator takes an even number of MACs")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.fspath(p) for p in paths]
        if len(paths) not in (1, len(self.macs)):
            raise ValueError("LoopGenerator takes one socket path or one per port")
        self.paths = paths if len(paths) > 1 else paths * len(self.macs)
        self.size = size
        self.queues = queues
        self.queue_size = queue_size
        # 1024 mbufs per port cover its RX ring, TX ring and primed bursts
        self.mbufs = mbufs or max(16384, 1024 * len(self.macs))
        self.prime_bursts = prime_bursts
        if socket_mem is None:
            socket_mem = 128 if len(self.macs) <= 2 else 256
        super().__init__(
            lcores=lcores or f"(0-{queues})@(1)", hugepages=hugepages,
            socket_mem=socket_mem, no_huge_mem=no_huge_mem,
            single_file_segments=True, cpus=cpus, workdir=workdir,
            file_prefix=file_prefix, max_seconds=max_seconds, testpmd=testpmd)
        self.cmd_path = os.path.join(self.workdir, f"{self.file_prefix}.cmd")

    def _vdev_args(self) -> list[str]:
        args = []
        for i, (path, mac) in enumerate(zip(self.paths, self.macs)):
            args += ["--vdev",
                     f"net_virtio_user{i},path={path},queues={self.queues},"
                     f"queue_size={self.queue_size},server=0,mac={mac}"]
        return args

    def _app_args(self) -> list[str]:
        q = self.queues
        peers = [f"--eth-peer={i},{self.macs[i ^ 1]}" for i in range(len(self.macs))]
        return [
            "--forward-mode=mac", *peers,
            "--stats-period", "1",
            f"--nb-cores={q}", f"--rxq={q}", f"--txq={q}",
            f"--txd={self.queue_size}", f"--rxd={self.queue_size}",
            f"--total-num-mbufs={self.mbufs}",
            f"--txpkts={self.size}",
            f"--cmdline-file={self.cmd_path}",
        ]

    def _before_start(self) -> None:
        with open(self.cmd_path, "w") as f:
            f.write(f"start tx_first {self.prime_bursts}\n" if self.prime_bursts
                    else "show port summary all\n")

    def wait_ports_up(self, timeout: float = 30.0) -> float:
        """Wait until every port is configured and forwarding has started.

        That means the vhost-user handshake with the switch finished for
        every port (virtio-user does it while the port is set up) and the
        first statistics block was printed.  Returns the seconds waited;
        raises TestpmdError (with the log tail) if testpmd exits or the
        timeout passes.
        """
        want = [f"PORT {i}: {mac.upper()}" for i, mac in enumerate(self.macs)]

        def up(text: str) -> bool:
            upper = text.upper()
            return all(w in upper for w in want) and _STATS_MARK in text
        return self._wait_for(up, timeout, "waiting for ports up")

    def rates(self, warmup: float = 3, seconds: int = 10,
              timeout: float | None = None) -> list[float]:
        """Per-second forwarded rates, Mpps (sum of both ports' Rx-pps).

        Sleeps ``warmup`` seconds, then collects the next ``seconds``
        complete statistics blocks (one per second).  Raises TestpmdError if
        testpmd dies or the blocks do not arrive within ``timeout``
        (default seconds + 15).
        """
        time.sleep(warmup)
        return self.next_rates(len(self.macs), seconds, timeout)


class RefSwitch(_Testpmd):
    """Reference backend: listening net_vhost ports with io forwarding.

    Port i listens on ``paths[i]`` (an even number of distinct paths); io
    forwarding passes everything from port 0 to 1 and back, 2 to 3 and
    back, and so on, MACs untouched.  Defaults to
    ``--no-huge -m 512``; ``hugepages=True`` uses ``--socket-mem 256``.
    The socket paths must not exist yet; stop() removes them if testpmd
    left them behind.
    """

    kind = "ref"

    def __init__(self, paths, *, lcores: str = "(0-1)@(0)", queues: int = 1,
                 hugepages: bool = False, socket_mem: int = 256,
                 no_huge_mem: int = 512, mbufs: int | None = None,
                 cpus: str | None = None, workdir: str | None = None,
                 file_prefix: str | None = None, max_seconds: float = 300,
                 testpmd: str | None = None):
        paths = [os.fspath(p) for p in paths]
        if len(paths) < 2 or len(paths) % 2 or len(set(paths)) != len(paths):
            raise ValueError("RefSwitch takes an even number of distinct socket paths")
        self.paths = paths
        self.queues = queues
        self.mbufs = mbufs or max(32768, 1024 * len(paths))
        self._created: list[str] = []
        super().__init__(
            lcores=lcores, hugepages=hugepages, socket_mem=socket_mem,
            no_huge_mem=no_huge_mem, single_file_segments=False, cpus=cpus,
            workdir=workdir, file_prefix=file_prefix,
            max_seconds=max_seconds, testpmd=testpmd)

    def _vdev_args(self) -> list[str]:
        args = []
        for i, path in enumerate(self.paths):
            args += ["--vdev",
                     f"net_vhost{i},iface={path},queues={self.queues},client=0"]
        return args

    def _app_args(self) -> list[str]:
        q = self.queues
        return ["--forward-mode=io", "--auto-start", "--stats-period", "5",
                f"--total-num-mbufs={self.mbufs}",
                f"--nb-cores={q}", f"--rxq={q}", f"--txq={q}"]

    def _before_start(self) -> None:
        for path in self.paths:
            if os.path.lexists(path):
                raise TestpmdError(
                    f"{path} already exists; not removing a file this helper "
                    "did not create")
        self._created = list(self.paths)

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait until every socket is listening.  Returns seconds waited."""
        def ready(text: str) -> bool:
            return (text.count("binding succeeded") >= len(self.paths)
                    and all(_is_socket(p) for p in self.paths))
        return self._wait_for(ready, timeout, "waiting for the sockets")

    def __enter__(self):
        super().__enter__()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _cleanup_runtime(self) -> None:
        super()._cleanup_runtime()
        for path in self._created:
            if _is_socket(path):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self._created = []


class RawTestpmd(_Testpmd):
    """Any other testpmd set-up: the given ``vdevs`` (each a --vdev value)
    and application ``args`` (after ``--``), optionally inside network
    namespace ``netns`` (for net_af_packet on a namespace's interface).
    Always ``--no-pci``; stats every second (``next_rates()`` reads them)."""

    kind = "raw"

    def __init__(self, vdevs, args, *, netns: str | None = None, lcores: str = "(0-1)@(1)",
                 hugepages: bool = False, socket_mem: int = 128, no_huge_mem: int = 256,
                 cpus: str | None = None, workdir: str | None = None,
                 file_prefix: str | None = None, max_seconds: float = 300,
                 testpmd: str | None = None):
        self.vdevs, self.args, self.netns = list(vdevs), list(args), netns
        super().__init__(
            lcores=lcores, hugepages=hugepages, socket_mem=socket_mem,
            no_huge_mem=no_huge_mem, single_file_segments=True, cpus=cpus,
            workdir=workdir, file_prefix=file_prefix, max_seconds=max_seconds,
            testpmd=testpmd)

    def _vdev_args(self) -> list[str]:
        return [a for v in self.vdevs for a in ("--vdev", v)]

    def _app_args(self) -> list[str]:
        return ["--stats-period", "1"] + self.args

    def command(self) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return prefix + super().command()

    def wait_started(self, timeout: float = 30.0) -> float:
        return self._wait_for(lambda t: _STATS_MARK in t, timeout, "waiting for forwarding")
