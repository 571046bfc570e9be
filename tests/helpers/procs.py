"""Process accounting for tests: CPU time from /proc."""
import os
import signal
import subprocess

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """utime+stime of the given live processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICK


def stop_session(proc, sig, grace=5.0, whole_group=True):
    """Stop a process started with start_new_session=True (so its process
    group id is its pid): `sig` to it (or its whole group), `grace` seconds,
    then SIGKILL to the group.  Idempotent; touches nothing else."""
    if proc is None or proc.poll() is not None:
        return
    try:
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def interrupt(proc, target, timeout):
    """SIGINT to target (proc's pid, or a pid inside a wrapper such as
    coreutils timeout), then wait up to timeout s for proc.  True if proc
    ended in time."""
    try:
        os.kill(target, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
