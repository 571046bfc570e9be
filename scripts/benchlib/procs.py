"""/proc readings for the benchmark: process trees, CPU time, memory."""
from __future__ import annotations

import os
import stat
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()  # fields from 3 (state) on


def process_tree(root: int) -> list[int]:
    """root and all its live descendants (scan of /proc)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f:
                parent[int(name)] = int(f[1])
    tree, frontier = [root], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        tree += kids
        frontier += kids
    return tree


def cpu_ticks(pids) -> dict[int, int]:
    """utime+stime (clock ticks) per PID, all threads included."""
    out = {}
    for pid in pids:
        f = _stat_fields(pid)
        if f:
            out[pid] = int(f[11]) + int(f[12])
    return out


def cpu_percent(before: dict[int, int], after: dict[int, int], wall: float) -> float:
    used = sum(t - before.get(pid, 0) for pid, t in after.items())
    return 100.0 * used / CLK_TCK / wall if wall > 0 else 0.0


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def pss_kib(pids) -> int:
    """Proportional set size of pids, KiB, without shared-memory mappings
    (guest RAM is not the switch's; sv3's rings are counted once, by shm_kib)."""
    total = 0
    for pid in pids:
        fields = {}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if rest and " " not in key:
                        fields[key] = int(rest.split()[0])
        except (OSError, ValueError):
            continue
        total += fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)
    return total


def shm_kib(prefix: str) -> int:
    """Memory in use by /dev/shm files named prefix* (pages touched)."""
    total = 0
    for name in os.listdir("/dev/shm"):
        if name.startswith(prefix):
            try:
                total += os.stat(os.path.join("/dev/shm", name)).st_blocks * 512
            except OSError:
                pass
    return total // 1024
