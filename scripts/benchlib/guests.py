"""Two TCG test guests measuring TCP to each other, for scripts/bench-guests:
VhostGuest (tests.helpers.guest.Guest, pinned), TapGuest (same guest on a tap
NIC in a netns), BridgeNetns (br0 + tap0/tap1 in a private namespace) and
CpuSampler (CPU ticks of some PIDs, read back for any time window)."""
from __future__ import annotations

import subprocess
import threading
import time

from tests.helpers.guest import (Guest, ensure_guest_image, ensure_qemu, iperf_client_cmd,
                                 iperf_server_cmd, ping_cmd)

from .procs import cpu_percent, cpu_ticks, log

MACS = ("52:54:00:55:00:01", "52:54:00:55:00:02")
IPS = ("10.55.0.1", "10.55.0.2")


class VhostGuest(Guest):
    """A Guest on a vhost-user socket, under `taskset -c cpus` if given."""

    def __init__(self, *a, cpus=None, **kw):
        super().__init__(*a, **kw)
        self.cpus = cpus

    def command(self):
        pin = ["taskset", "-c", self.cpus] if self.cpus else []
        return pin + super().command()


class TapGuest(Guest):
    """The test guest on tap device `tap` in namespace `netns`."""

    def __init__(self, name, mac, netns, tap, ip, cmd, cpus=None, mem="256M", timeout=180):
        super().__init__(name, mac, None, ip, cmd, mem=mem, timeout=timeout)
        self.netns, self.tap, self.cpus = netns, tap, cpus

    def command(self):
        kernel, initrd = ensure_guest_image()
        pin = ["taskset", "-c", self.cpus] if self.cpus else []
        return ["ip", "netns", "exec", self.netns, *pin, ensure_qemu(),
                "-name", self.name, "-nodefaults", "-no-user-config", "-display", "none",
                "-serial", "stdio", "-no-reboot",
                "-machine", "q35,accel=tcg", "-cpu", "max", "-m", self.mem, "-smp", "1",
                "-object", f"memory-backend-memfd,id=mem,size={self.mem},share=on",
                "-numa", "node,memdev=mem",
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no,vhost=off",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
                "-kernel", kernel, "-initrd", initrd, "-append", self.append_line()]


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class BridgeNetns:
    """Namespace `name` with bridge br0 and taps tap0, tap1 as its ports.
    Nothing is created in the host's namespace; __exit__ deletes the taps,
    the bridge and the namespace (stop the QEMUs first)."""

    def __init__(self, name, taps=("tap0", "tap1")):
        self.name, self.taps = name, taps
        self.created = False

    def __enter__(self):
        _ip("netns", "add", self.name)
        self.created = True
        n = ["-n", self.name]
        _ip(*n, "link", "set", "lo", "up")
        _ip(*n, "link", "add", "br0", "type", "bridge")
        _ip(*n, "link", "set", "br0", "up")
        for tap in self.taps:
            _ip(*n, "tuntap", "add", "dev", tap, "mode", "tap")
            _ip(*n, "link", "set", tap, "master", "br0", "up")
        return self

    def __exit__(self, *exc):
        if not self.created:
            return False
        for dev in (*self.taps, "br0"):
            _ip("-n", self.name, "link", "del", dev, check=False)
        r = _ip("netns", "del", self.name, check=False)
        if r.returncode != 0:
            log(f"could not delete netns {self.name}: {r.stderr.strip()}")
        self.created = False
        return False


class CpuSampler:
    """Samples cpu_ticks(pids()) every `period` s in a daemon thread."""

    def __init__(self, pids, period=0.2):
        self.pids, self.period = pids, period
        self.samples = []               # (time.monotonic(), {pid: ticks})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self):
        while True:
            self.samples.append((time.monotonic(), cpu_ticks(self.pids())))
            if self._stop.wait(self.period):
                self.samples.append((time.monotonic(), cpu_ticks(self.pids())))
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        return False

    def percent(self, t0, t1):
        """CPU % (100 = one CPU) from the last sample before t0 to the last
        before t1 (processes such as sv3's workers may be gone just after)."""
        before = [s for s in self.samples if s[0] <= t0] or self.samples[:1]
        upto = [s for s in self.samples if s[0] <= t1]
        if not before or not upto or upto[-1][0] <= before[-1][0]:
            return None
        (ta, a), (tb, b) = before[-1], upto[-1]
        return cpu_percent(a, b, tb - ta)


def pair_scripts(seconds, boot_wait=120):
    """(script for A, script for B).  A serves two iperf3 tests; B pings A
    until it answers, then runs `iperf3 -c A` (B->A) and `-c A -R` (A->B)."""
    server = iperf_server_cmd(timeout=boot_wait + seconds + 30)
    a = server + server
    b = (ping_cmd(IPS[0], count=5, wait=boot_wait)
         + iperf_client_cmd(IPS[0], seconds=seconds, wait=60)
         + iperf_client_cmd(IPS[0], seconds=seconds, reverse=True, wait=60))
    return a, b


def line_time(guest, result, kind, last=False):
    """time.monotonic() when the guest printed its first (last) `kind` line."""
    hits = [t for d, t in zip(result.lines, result.times) if d.get("kind") == kind and t is not None]
    return guest.started_at + (hits[-1] if last else hits[0]) if hits else None
