"""sv3 under test: python -m sv3.master pinned with taskset."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.procs import interrupt

from .procs import _is_socket, _stat_fields, log, process_tree, pss_kib, shm_kib


class Sv3StartError(RuntimeError):
    pass


class Sv3Switch:
    """python -m sv3.master pinned with taskset, under coreutils timeout."""

    def __init__(self, sock: str, workdir: str, *, cpus: str, extra_args,
                 max_seconds: float, start_timeout: float, env: dict, netns: str | None = None):
        self.sock = sock
        self.cpus = cpus
        self.extra_args = list(extra_args)
        self.max_seconds = max_seconds
        self.start_timeout = start_timeout
        self.env = env
        self.netns = netns      # run inside this network namespace (uplink benchmarks)
        self.log_path = os.path.join(workdir, Path(sock).stem + ".log")
        self.proc = None
        self.pid = None  # the master itself (child of `timeout`)
        self._tree: set[int] = set()
        self._log = None

    def command(self) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return (prefix + [sys.executable, "-m", "sv3.master", "--socket", self.sock]
                + self.extra_args)

    def start(self):
        if os.path.lexists(self.sock):
            raise Sv3StartError(f"{self.sock} exists already")
        cmd = (["timeout", "-s", "INT", "-k", "10", str(int(self.max_seconds)),
                "taskset", "-c", self.cpus] + self.command())
        self._log = open(self.log_path, "wb")
        self._log.write(("# " + " ".join(cmd) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
            cwd="/")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.pid is None:
                kids = [p for p in process_tree(self.proc.pid) if p != self.proc.pid]
                if kids:
                    self.pid = kids[0]
            if self.proc.poll() is not None:
                raise Sv3StartError(
                    f"sv3 exited with status {self.proc.returncode} before "
                    f"listening on {self.sock}")
            if self.pid is not None and _is_socket(self.sock):
                return self
            time.sleep(0.05)
        raise Sv3StartError(
            f"sv3 did not listen on {self.sock} within {self.start_timeout:g} s")

    def tree(self) -> list[int]:
        """Master and descendants; remembered so that stop() can reap them."""
        if self.pid is None:
            return []
        pids = process_tree(self.pid)
        self._tree.update(pids)
        return pids

    def ports(self, include_gone=False):
        """`sv3.ctl ports --json [--all]`, best effort (None on any failure)."""
        try:
            r = subprocess.run(
                [sys.executable, "-m", "sv3.ctl", "--socket", self.sock,
                 "ports", "--json"] + (["--all"] if include_gone else []),
                capture_output=True, timeout=10, env=self.env, cwd="/",
                start_new_session=True)
            if r.returncode == 0:
                return json.loads(r.stdout)
            log(f"sv3.ctl ports failed ({r.returncode}): "
                f"{r.stderr.decode(errors='replace').strip()[-300:]}")
        except (OSError, subprocess.TimeoutExpired, ValueError) as e:
            log(f"sv3.ctl ports failed: {e}")
        return None

    def instance(self) -> str | None:
        m = re.search(r"instance (sv3\.\S+)", self.log_text())
        return m.group(1) if m else None

    def memory(self) -> dict:
        """KiB: private memory of the master and workers (PSS without
        shared mappings) and the instance's shm segments (rings, blocks)."""
        inst = self.instance()
        return {"pss_kib": pss_kib(self.tree()),
                "shm_kib": shm_kib(inst + ".") if inst else 0}

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT to the master, then SIGKILL to every PID of its tree."""
        if self.proc is None:
            return
        try:
            self.tree()
            if self.proc.poll() is None:
                target = self.pid if self.pid is not None else self.proc.pid
                if not interrupt(self.proc, target, timeout):
                    log(f"sv3 (pid {target}) ignored SIGINT for {timeout:g} s; killing")
            # Anything of the tree still alive: the wrapper, the master, or
            # workers that outlived it.  Only PIDs seen in our own tree.
            pids = sorted(self._tree | {self.proc.pid})
            survivors = [p for p in pids
                         if (_stat_fields(p) or ["X"])[0] not in ("Z", "X")]
            for pid in survivors:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log(f"timeout wrapper {self.proc.pid} did not exit")
        finally:
            if self._log:
                self._log.close()
                self._log = None
            if _is_socket(self.sock):  # our path, created by our sv3
                os.unlink(self.sock)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False


def sv3_env() -> dict:
    """Environment for sv3: add the repo to PYTHONPATH only if sv3 is not installed."""
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", "import sv3"], cwd="/",
                       capture_output=True, timeout=60, env=env)
    if r.returncode != 0:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env
