"""Helpers for process-fault and endurance tests: what a process holds
(/proc fds, RSS, shm mappings), waiting for pids to die, the processes and
/dev/shm segments of one switch instance, a fuller vhost-user handshake, a
loop generator with other MACs, a guest that may reboot, and reading a
guest's console while it runs.

Reads /proc only; never signals anything.  Stdlib (+ sv3.ctl) only."""
import os
import re
import time
from collections import Counter

from sv3.ctl import query

from .guest import Guest, parse_log

from tests.fakes.frontend import Frontend

FD_SLACK = 2          # fds the master may gain over a test without it being a leak


# --------------------------------------------------------------------------
# /proc

def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_kinds(pid):
    """Counter of what the fds of pid point at, by kind: 'socket', 'pipe',
    'anon_inode:[pidfd]', 'anon_inode:[eventfd]', '/dev/shm/...', a path."""
    kinds = Counter()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            target = os.readlink(os.path.join(d, fd))
        except FileNotFoundError:
            continue
        kinds[re.sub(r":\[\d+\]$", "", target)] += 1
    return kinds


def shm_maps(pid, prefix=""):
    """Distinct /dev/shm files mapped by pid (optionally only names starting with prefix)."""
    out = set()
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/dev/shm/" + prefix):
                out.add(parts[5].strip())
    return out


def port_residue(pid, instance):
    """What the master holds per port (pidfds, eventfds, shm mappings of its
    instance); empty when it has no port left and leaks nothing."""
    kinds = fd_kinds(pid)
    res = {k: v for k, v in kinds.items() if k in ("anon_inode:[pidfd]", "anon_inode:[eventfd]")}
    maps = shm_maps(pid, instance)
    if maps:
        res["shm maps"] = sorted(maps)
    return res


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_dead(pids, timeout, what="processes"):
    """Wait until none of pids is alive; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError("%s still alive after %.1f s: %s" % (what, timeout, alive))
        time.sleep(0.02)


def wait_until(pred, timeout, what, period=0.05):
    """Poll pred() until it returns something true; returns (value, seconds)."""
    t0 = time.monotonic()
    while True:
        v = pred()
        if v:
            return v, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(period)


def instance_processes(instance):
    """Live port workers of one switch instance, whoever their parent is
    now: processes named sv3-port-<id> that map a shared-memory segment of
    the instance (/dev/shm/<instance>.*).  `instance` may be a prefix
    ending at a dot (sv3.<pid>)."""
    want = ("/dev/shm/" + instance.rstrip(".") + ".").encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % name, "rb") as f:
                if not f.read().startswith(b"sv3-port-"):
                    continue
            with open("/proc/%s/maps" % name, "rb") as f:
                maps = f.read()
        except OSError:
            continue
        if want in maps and pid_alive(int(name)):
            pids.append(int(name))
    return pids


def full_instance(sw):
    """The whole instance name from a Switch's banner (sv3.<pid>.<hex>)."""
    m = re.search(r"instance (sv3\.\S+)", sw.log())
    return m.group(1) if m else sw.instance


def shm_segments(instance):
    """/dev/shm names of one instance (counter blocks .pN, rings .rA-B)."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(instance + "."))


def segments_of_port(instance, port_id):
    pat = re.compile(r"^%s\.(p%d|r%d-\d+|r\d+-%d)$" % (re.escape(instance), port_id, port_id, port_id))
    return [n for n in shm_segments(instance) if pat.match(n)]


def unlink_segments(names):
    for n in names:
        try:
            os.unlink("/dev/shm/" + n)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------
# the switch, in-process (no `python -m sv3.ctl` per sample)

def ports(sock_path, include_gone=False):
    return query(sock_path, "ports", all=include_gone)


def fdb(sock_path):
    return query(sock_path, "fdb")


def port_of_mac(rows, mac):
    for r in rows:
        if mac.lower() in r["macs"]:
            return r
    return None


def check_clean_stop(sw, fd_base, log_must_not=(" ERROR ", "Traceback")):
    """End of a test whose master is alive: no port left, no fd and no
    per-port residue in the master, then SIGTERM: exit 0, no worker, no
    segment, no socket.  Returns a dict of what was measured."""
    pid = sw.proc.pid
    wait_until(lambda: ports(sw.socket) == [], 20, "every port to detach")
    fds = fd_count(pid)
    residue = port_residue(pid, sw.instance)
    assert fds <= fd_base + FD_SLACK, "master fd leak: %d fds at start, %d now: %s" % (
        fd_base, fds, fd_kinds(pid))
    assert not residue, "master still holds per-port resources: %s" % residue
    rc = sw.stop()
    assert rc == 0, "master exit status %r\n%s" % (rc, sw.log()[-3000:])
    assert instance_processes(sw.instance) == [], "workers left behind"
    assert sw.shm_segments() == [], "segments left behind: %s" % sw.shm_segments()
    assert not os.path.exists(sw.socket) and not os.path.exists(sw.socket + ".ctl")
    log = sw.log()
    for bad in log_must_not:
        assert bad not in log, "master log has %r:\n%s" % (bad, log[-4000:])
    return {"fds_start": fd_base, "fds_end": fds}


# --------------------------------------------------------------------------
# front-ends

class RebootableGuest(Guest):
    """A Guest without -no-reboot: `reboot -f` inside resets the machine
    (and its virtio device) instead of ending QEMU.  Its script runs again
    on every boot; the host decides when it has seen enough."""

    def command(self):
        args = super().command()
        args.remove("-no-reboot")
        return args


def console(guest):
    """The guest's console log so far (bytes are decoded, \\r removed)."""
    with open(guest.log_path, "rb") as f:
        return f.read().decode("utf-8", "replace").replace("\r", "")


def sv3_lines(guest, kind):
    return [d for d in parse_log(console(guest)) if d.get("kind") == kind]


REPLY = re.compile(r"bytes from ([0-9.]+): seq=(\d+)")


def replies(text, src):
    """seq numbers of ping replies from src in a console text."""
    return [int(s) for ip, s in REPLY.findall(text) if ip == src]


def stream_ping_cmd(peer_ip, seconds=150, interval=0.2, wait=90):
    """Wait until peer_ip answers (at most `wait` s), print 'SV3 reached',
    then ping it every `interval` s until `seconds` have passed since the
    start, printing every reply on the console as it comes (busybox ping
    is restarted if it ever gives up, e.g. while the link is down)."""
    return f"""\
t0=$(date +%s); end=$((t0+{int(seconds)}))
until ping -c1 -W1 {peer_ip} >/dev/null 2>&1; do [ $(date +%s) -ge $((t0+{int(wait)})) ] && break; usleep 200000; done
echo "SV3 reached peer={peer_ip} waited=$(($(date +%s)-t0))"
while [ $(date +%s) -lt $end ]; do ping -i {interval} -w $((end-$(date +%s))) {peer_ip}; usleep 200000; done
echo "SV3 pingdone"
"""


# --------------------------------------------------------------------------
# a fuller vhost-user handshake (no QEMU): features, memory table, both vrings

class HandshakeClient(Frontend):
    """A front-end (tests/fakes/frontend.py; attach() brings its port to
    ACTIVE the way QEMU does) whose send_frames waits until the switch has
    used every buffer.  close() releases everything."""

    def stop_device(self):
        """GET_VRING_BASE on both vrings: the device reset QEMU does."""
        return self.stop()

    def send_frames(self, frames, timeout=5.0):
        """Put frames on the TX vring, kick, and wait until the switch has
        used them all.  Raises TimeoutError if it does not."""
        super().send_frames(frames)
        done, deadline = 0, time.monotonic() + timeout
        while done < len(frames):
            done += self.reclaim_tx()
            if done < len(frames) and time.monotonic() > deadline:
                raise TimeoutError("the switch used %d of %d TX buffers in %.0f s"
                                   % (done, len(frames), timeout))
            time.sleep(0.0005)


def broadcast_frame(src):
    """A minimal broadcast Ethernet frame (60 bytes) from MAC bytes `src`."""
    return b"\xff" * 6 + src + b"\x08\x06" + bytes(46)
