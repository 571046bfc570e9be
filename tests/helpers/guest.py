"""Run the sv3 test guest (scripts/build-guest) under QEMU for pytest.

The guest boots, configures eth0 from its kernel command line, prints

    SV3 status mac=... ip=... mtu=... queues=... features=... ip6=... uptime=...

runs one busybox-sh script, prints ``SV3 exit=<code>`` and powers off.  The
script reports results in the same form: ``SV3 <kind> key=value ...``.

    kernel, initrd = ensure_guest_image()
    with Guest("a", "52:54:00:55:00:01", "/tmp/sv3", "10.55.0.1/24",
               cmd=ping_cmd("10.55.0.2")) as g:
        g.start()
        r = g.wait()
    assert r.exit_code == 0 and r.find("ping")["received"] == "20"

Stdlib only.  Every QEMU runs in its own process group and is killed by that
group (never by name) when it overruns its timeout.
"""

import base64
import gzip
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .procs import stop_session

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-guest"
LAUNCHER = REPO_ROOT / "contrib" / "qemu" / "sv3-qemu"
GUEST_DIR = REPO_ROOT / "build" / "guest"
QEMU = "qemu-system-x86_64"

# Kernel command line common to every guest; sv3.* tokens are appended.
BASE_APPEND = ("console=ttyS0 quiet loglevel=3 panic=-1 tsc=reliable no_timer_check "
               "i8042.noaux i8042.nokbd i8042.nopnp")
CMDLINE_MAX = 2047          # x86 COMMAND_LINE_SIZE is 2048 including the NUL

__all__ = [
    "REPO_ROOT", "BASE_APPEND", "ensure_guest_image", "ensure_qemu", "Guest",
    "GuestResult", "parse_sv3_line", "parse_log", "ping_cmd", "iperf_client_cmd",
    "iperf_server_cmd", "feature_bit",
]

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[@-Z\\-_])")


# --------------------------------------------------------------------------
# image and host tools

def _apt_install(*pkgs):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)


def ensure_qemu():
    """Return the path of qemu-system-x86_64, installing it if missing."""
    path = shutil.which(QEMU)
    if not path:
        _apt_install("qemu-system-x86")
        path = shutil.which(QEMU)
    if not path:
        raise RuntimeError("%s still missing after installing qemu-system-x86" % QEMU)
    return path


def ensure_guest_image():
    """Return (kernel, initrd) paths, running scripts/build-guest if they are
    missing or older than the script."""
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.cpio.gz"

    def fresh():
        if not (kernel.exists() and initrd.exists()):
            return False
        t = BUILD_SCRIPT.stat().st_mtime
        return kernel.stat().st_mtime > t and initrd.stat().st_mtime > t

    if not fresh():
        subprocess.run([str(BUILD_SCRIPT), "--out", str(GUEST_DIR)], check=True,
                       stdin=subprocess.DEVNULL)
        if not (kernel.exists() and initrd.exists()):
            raise RuntimeError("scripts/build-guest did not produce %s" % GUEST_DIR)
    return str(kernel), str(initrd)


# --------------------------------------------------------------------------
# console parsing

def _clean(line):
    return _ANSI.sub("", line).replace("\r", "")


def parse_sv3_line(line):
    """'SV3 ping sent=20 received=20' -> {'kind': 'ping', 'sent': '20', ...}.

    ``kind`` is the first bare word; for a line of fields only (``SV3
    exit=0``) it is the first key.  Values stay strings.  Returns None for
    lines that do not start with 'SV3 '."""
    line = _clean(line).strip()
    if not line.startswith("SV3 "):
        return None
    d = {}
    kind = None
    for tok in line[4:].split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            if kind is None:
                kind = k
            d[k] = v
        elif kind is None:
            kind = tok
    d["kind"] = kind or ""
    return d


def parse_log(text):
    """All SV3 lines of a console log, as dicts (see parse_sv3_line)."""
    out = []
    for raw in text.split("\n"):
        d = parse_sv3_line(raw)
        if d is not None:
            out.append(d)
    return out


class GuestResult:
    """What one guest printed.

    lines      list of dicts, one per 'SV3 ' line, in order (key 'kind' added)
    times      seconds from QEMU start to each line's appearance (parallel to
               lines; None where it was not seen live)
    status     dict of the 'SV3 status' line ({} if none)
    exit_code  int from 'SV3 exit=N', or None if the guest never got there
    timed_out  True if the host killed QEMU at the timeout
    returncode QEMU's own exit status
    elapsed    seconds from QEMU start until it exited or was killed
    log        the whole console log (\\r and ANSI sequences removed)
    log_path   where the raw log is
    """

    def __init__(self, lines, times, log, log_path, timed_out, returncode, elapsed):
        self.lines = lines
        self.times = times
        self.log = log
        self.log_path = log_path
        self.timed_out = timed_out
        self.returncode = returncode
        self.elapsed = elapsed
        self.status = self.find("status") or {}
        ex = self.find("exit")
        try:
            self.exit_code = int(ex["exit"]) if ex else None
        except ValueError:
            self.exit_code = None

    def find(self, kind):
        """The last line of this kind, or None."""
        for d in reversed(self.lines):
            if d.get("kind") == kind:
                return d
        return None

    def find_all(self, kind):
        return [d for d in self.lines if d.get("kind") == kind]

    def time_of(self, kind):
        """Host-side seconds from QEMU start to the first line of this kind."""
        for d, t in zip(self.lines, self.times):
            if d.get("kind") == kind:
                return t
        return None

    @property
    def ok(self):
        return self.exit_code == 0 and not self.timed_out

    def tail(self, n=60):
        return "\n".join(self.log.splitlines()[-n:])

    def __repr__(self):
        return ("GuestResult(exit_code=%r, timed_out=%r, elapsed=%.1f, lines=%r)"
                % (self.exit_code, self.timed_out, self.elapsed or 0.0, self.lines))


# --------------------------------------------------------------------------
# the guest

class Guest:
    """One test guest on a vhost-user socket.

    ip / ip6 are 'addr/prefix'; cmd is a busybox-sh script run after eth0 is
    configured; device_opts is appended to -device virtio-net-pci; extra_args
    go to QEMU as they are.  timeout (s) bounds the whole run from start().
    """

    def __init__(self, name, mac, socket, ip, cmd, ip6=None, mtu=None, device_opts="",
                 queues=1, smp=1, mem="256M", timeout=180, extra_args=(), accel=None):
        self.name = name
        self.mac = mac
        self.socket = socket
        self.ip = ip
        self.cmd = cmd or "true"
        self.ip6 = ip6
        self.mtu = mtu
        self.device_opts = device_opts or ""
        self.queues = int(queues)
        self.smp = int(smp)
        self.mem = mem
        self.timeout = timeout
        self.extra_args = tuple(extra_args)
        self.accel = accel
        self.log_dir = None
        self.log_path = None
        self.started_at = None          # time.monotonic() at start()
        self._proc = None
        self._log = None
        self._seen = []                 # (seconds since start, dict) from the tail thread
        self._tail = None
        self._tail_stop = threading.Event()
        self._timed_out = False
        self._ended_at = None
        self._result = None

    # -- command line
    def append_line(self):
        toks = [BASE_APPEND]
        if self.ip:
            toks.append("sv3.ip=" + self.ip)
        if self.ip6:
            toks.append("sv3.ip6=" + self.ip6)
        if self.mtu:
            toks.append("sv3.mtu=%d" % int(self.mtu))
        script = self.cmd.encode()
        line = " ".join(toks + ["sv3.cmd=" + base64.b64encode(script).decode()])
        if len(line) > CMDLINE_MAX:
            z = gzip.compress(script, 9, mtime=0)
            line = " ".join(toks + ["sv3.cmdz=" + base64.b64encode(z).decode()])
        if len(line) > CMDLINE_MAX:
            raise ValueError("guest %s: command too long for the kernel command line "
                             "(%d > %d bytes even gzipped)" % (self.name, len(line), CMDLINE_MAX))
        return line

    def command(self):
        kernel, initrd = ensure_guest_image()
        args = [str(LAUNCHER), "--qemu", ensure_qemu(), "--name", self.name,
                "--socket", str(self.socket), "--mac", self.mac, "--mem", str(self.mem),
                "--smp", str(self.smp), "--queues", str(self.queues),
                "--kernel", kernel, "--initrd", initrd, "--append", self.append_line()]
        if self.accel:
            args += ["--accel", self.accel]
        if self.device_opts:
            args += ["--device-opts", self.device_opts]
        args += ["--", "-no-reboot", *self.extra_args]
        return args

    # -- lifecycle
    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def start(self):
        if self._proc is not None:
            raise RuntimeError("guest %s already started" % self.name)
        args = self.command()
        self.log_dir = tempfile.mkdtemp(prefix="sv3-guest-%s-" % self.name)
        self.log_path = os.path.join(self.log_dir, "console.log")
        self._log = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self._tail = threading.Thread(target=self._tail_log, name="tail-" + self.name,
                                      daemon=True)
        self._tail.start()
        return self

    def _tail_log(self):
        buf = b""
        with open(self.log_path, "rb") as f:
            while True:
                last = self._tail_stop.is_set() or self._proc.poll() is not None
                chunk = f.read()
                if chunk:
                    now = time.monotonic() - self.started_at
                    buf += chunk
                    *done, buf = buf.split(b"\n")
                    for raw in done:
                        d = parse_sv3_line(raw.decode("utf-8", "replace"))
                        if d is not None:
                            self._seen.append((now, d))
                if last:
                    return
                time.sleep(0.05)

    def _kill(self):
        stop_session(self._proc, signal.SIGTERM)

    def wait(self, timeout=None):
        """Wait for QEMU to exit (default: what is left of self.timeout since
        start()); kill it on timeout.  Returns a GuestResult."""
        if self._proc is None:
            raise RuntimeError("guest %s not started" % self.name)
        if self._result is not None:
            return self._result
        if timeout is None:
            timeout = max(0.0, self.started_at + self.timeout - time.monotonic())
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            self._kill()
        return self._finish()

    def stop(self):
        """Kill QEMU if it still runs (SIGTERM to its group, 5 s, SIGKILL).
        Idempotent."""
        if self._proc is None:
            return
        self._kill()
        self._finish()

    def _finish(self):
        if self._result is not None:
            return self._result
        if self._ended_at is None:
            self._ended_at = time.monotonic()
        self._tail_stop.set()
        if self._tail is not None:
            self._tail.join(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        with open(self.log_path, "rb") as f:
            text = _clean(f.read().decode("utf-8", "replace"))
        lines = parse_log(text)
        times = [t for t, _ in self._seen][:len(lines)]
        times += [None] * (len(lines) - len(times))
        self._result = GuestResult(lines, times, text, self.log_path, self._timed_out,
                                   self._proc.returncode, self._ended_at - self.started_at)
        return self._result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return "Guest(%r, mac=%r, socket=%r, pid=%r)" % (self.name, self.mac, self.socket, self.pid)


# --------------------------------------------------------------------------
# guest-side command snippets (busybox sh)

def _q(s):
    return shlex.quote(str(s))


def ping_cmd(peer_ip, count=20, interval=0.2, wait=60):
    """Ping peer_ip until it answers (at most `wait` s), then `count` pings
    every `interval` s.  Prints
    'SV3 ping sent=N received=M rtt_avg=MS waited=S'."""
    p = _q(peer_ip)
    return f"""\
t0=$(date +%s)
until ping -c1 -W1 {p} >/dev/null 2>&1; do [ $(date +%s) -ge $((t0+{int(wait)})) ] && break; usleep 200000; done
w=$(($(date +%s)-t0))
ping -c {int(count)} -i {interval} -W 2 {p} >/tmp/ping.out 2>&1
cat /tmp/ping.out
awk -v w=$w '/packets transmitted/{{s=$1;r=$4}} /round-trip/{{split($4,a,"/");v=a[2]}} END{{print "SV3 ping sent=" s+0 " received=" r+0 " rtt_avg=" (v==""?"none":v) " waited=" w}}' /tmp/ping.out
"""


_IPERF_AWK = ("awk -v rc=$rc -v n=$n '"
              "/receiver/{for(i=2;i<=NF;i++)if($i==\"Mbits/sec\"){if($1==\"[SUM]\")ms=$(i-1);else m=$(i-1)}} "
              "/sender/{for(i=2;i<=NF;i++)if($i==\"Mbits/sec\"){if($1==\"[SUM]\")rs=$(i+1);else r=$(i+1)}} "
              "END{if(ms!=\"\")m=ms;if(rs!=\"\")r=rs;if(m==\"\")m=0;if(r!~/^[0-9]+$/)r=\"none\";"
              "print \"SV3 %s mbps=\" m \" retrans=\" r \" rc=\" rc%s}' /tmp/%s.out")


def iperf_client_cmd(server_ip, seconds=5, reverse=False, parallel=1, extra="", wait=60):
    """Run `iperf3 -c server_ip`, retrying until the server accepts (at most
    `wait` s).  Prints 'SV3 iperf mbps=<receiver Mbit/s> retrans=<n> rc=<rc>
    tries=<n>' (mbps=0 if no test completed)."""
    opts = "-t %d -f m --connect-timeout 2000" % int(seconds)
    if reverse:
        opts += " -R"
    if int(parallel) > 1:
        opts += " -P %d" % int(parallel)
    if extra:
        opts += " " + extra
    awk = _IPERF_AWK % ("iperf", ' " tries=" n', "iperf")
    return f"""\
t0=$(date +%s); n=0
while :; do n=$((n+1)); timeout {int(seconds) + 30} iperf3 -c {_q(server_ip)} {opts} >/tmp/iperf.out 2>&1; rc=$?; [ $rc = 0 ] && break; [ $(date +%s) -ge $((t0+{int(wait)})) ] && break; sleep 1; done
cat /tmp/iperf.out
{awk}
"""


def iperf_server_cmd(timeout=150):
    """Serve exactly one iperf3 test (`iperf3 -s -1`), giving up after
    `timeout` s.  Prints 'SV3 iperf_server mbps=<Mbit/s> retrans=<n> rc=<rc>'."""
    awk = _IPERF_AWK % ("iperf_server", "", "iperfs")
    return f"""\
n=1; timeout {int(timeout)} iperf3 -s -1 -f m >/tmp/iperfs.out 2>&1; rc=$?
cat /tmp/iperfs.out
{awk}
"""


def feature_bit(features_str, bit):
    """True if virtio feature `bit` is set in the 0/1 string from
    /sys/class/net/eth0/device/features (character i is bit i)."""
    return bool(features_str) and 0 <= bit < len(features_str) and features_str[bit] == "1"
