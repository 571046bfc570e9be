"""The benchmark's scenarios: one method per kind of run, each returning a
result dict.  Every process a scenario starts is registered in
Bench.live, so that Bench.sweep() stops it whatever happened."""
from __future__ import annotations

import contextlib
import os
import statistics
import time

from . import paced
from .procs import cpu_percent, cpu_ticks, log
from .switch import Sv3Switch

ZEROLOSS_MACS = ("02:00:00:00:10:01", "02:00:00:00:10:02")


class Bench:
    def __init__(self, args, workdir: str, sv3_env: dict, tp, frontend_cls):
        self.a = args
        self.workdir = workdir
        self.sv3_env = sv3_env
        self.tp = tp
        self.frontend_cls = frontend_cls
        self.live = []  # objects with .stop(), for the final sweep
        self.budget = args.warmup + max(args.seconds, args.zeroloss_seconds) + 120

    # -- building blocks ------------------------------------------------------
    def _switch(self, tag, extra=()):
        sock = os.path.join(self.workdir, f"{tag}.sock")
        sw = Sv3Switch(sock, self.workdir, cpus=str(self.a.switch_cpu),
                       extra_args=list(self.a.sv3_arg) + list(extra),
                       max_seconds=self.budget, start_timeout=self.a.start_timeout,
                       env=self.sv3_env)
        self.live.append(sw)
        return sw

    def _generator(self, paths, size, tag, pairs=1, prime=8):
        gen = self.tp.LoopGenerator(
            paths, size=size, macs=self.tp.port_macs(pairs), prime_bursts=prime,
            hugepages=self.a.hugepages, lcores=f"(0-1)@({self.a.gen_cpu})", cpus=str(self.a.gen_cpu),
            workdir=self.workdir, file_prefix=f"bench_gen_{os.getpid()}_{tag}",
            max_seconds=self.budget)
        self.live.append(gen)
        return gen

    def _measure(self, gen, cpu_pids_fn):
        """Warm up, then sample rates and CPU over the same window."""
        gen.wait_ports_up(timeout=60)
        time.sleep(self.a.warmup)
        pids = cpu_pids_fn()
        c0, g0, t0 = cpu_ticks(pids), cpu_ticks([gen.pid]), time.monotonic()
        rates = gen.rates(warmup=0, seconds=self.a.seconds)
        pids = cpu_pids_fn()
        c1, g1, t1 = cpu_ticks(pids), cpu_ticks([gen.pid]), time.monotonic()
        # The generator's share of its CPU shows whether others disturbed the run.
        return rates, cpu_percent(c0, c1, t1 - t0), cpu_percent(g0, g1, t1 - t0)

    @staticmethod
    def _result(rates, cpu, gen_cpu, totals, size, nports):
        med = statistics.median(rates) if rates else 0.0
        flowed = med > 0 and len(totals) == nports and all(
            t["rx_packets"] > 0 for t in totals.values())
        return {"size": size, "nports": nports, "mpps": med, "rates": rates,
                "gbps": med * size * 8 / 1000, "cpu_percent": cpu,
                "gen_cpu_percent": gen_cpu,
                "generator_totals": {str(k): v for k, v in totals.items()},
                "flowed": flowed}

    @staticmethod
    def _with_memory(res, mem, nports):
        res["memory"] = mem
        res["mib_per_port"] = (mem["pss_kib"] + mem["shm_kib"]) / 1024 / nports
        return res

    @staticmethod
    def _final_rows(sw, nports, timeout=10):
        """The final counters of the generator's ports, once all are gone."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in sw.ports(include_gone=True) or [] if r["macs"]]
            if len(rows) >= nports and all(r["state"] == "gone" for r in rows) \
                    or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    @contextlib.contextmanager
    def _as_generator(self, raise_by=0):
        """This process on the generator CPU (and raise_by nice levels
        higher when allowed) for the duration of the block."""
        mine, nice = os.sched_getaffinity(0), os.getpriority(os.PRIO_PROCESS, 0)
        os.sched_setaffinity(0, {self.a.gen_cpu})
        try:
            if raise_by:
                try:
                    os.setpriority(os.PRIO_PROCESS, 0, nice - raise_by)
                except PermissionError:
                    log("cannot raise this process's priority; its own wake-ups are counted")
            yield
        finally:
            os.sched_setaffinity(0, mine)
            if raise_by and os.getpriority(os.PRIO_PROCESS, 0) != nice:
                os.setpriority(os.PRIO_PROCESS, 0, nice)

    def attach_ms(self, sock, times=5):
        """Median time for one more port to attach: connect, the whole
        QEMU-style handshake, until every vring has started.  The probe
        (this process) runs on the generator CPU at nice -5 when allowed,
        so that its own wake-ups behind the busy-polling generator are not
        counted as the switch's."""
        took = []
        with self._as_generator(raise_by=5):
            for _ in range(times):
                t = time.monotonic()
                fe = self.frontend_cls(sock).attach()
                took.append((time.monotonic() - t) * 1000)
                fe.close()
                time.sleep(0.2)
        return statistics.median(took)

    # -- scenarios ------------------------------------------------------------
    def loop_sv3(self, size, run, pairs=1, extra=(), attach=False):
        tag = f"sv3_{size}_{pairs}_{run}"
        sw = self._switch(tag.replace("_", "-"), extra)
        with sw:
            gen = self._generator([sw.sock], size, tag, pairs)
            with gen:
                try:
                    rates, cpu, gen_cpu = self._measure(gen, sw.tree)
                except self.tp.TestpmdError:
                    log("sv3 log tail:\n" + sw.log_text()[-3000:])
                    raise
                mem = sw.memory()
                took = self.attach_ms(sw.sock) if attach else None
                totals = gen.stop()
            ports = self._final_rows(sw, 2 * pairs)
        res = self._result(rates, cpu, gen_cpu, totals, size, 2 * pairs)
        res.update(sv3_ports=ports, attach_ms=took)
        return self._with_memory(res, mem, 2 * pairs)

    def loop_ref(self, size, run, pairs=1):
        tag = f"ref_{size}_{pairs}_{run}"
        socks = [os.path.join(self.workdir, f"ref-{size}-{pairs}-{run}-{i}.sock")
                 for i in range(2 * pairs)]
        ref = self.tp.RefSwitch(
            socks, hugepages=self.a.hugepages,
            lcores=f"(0-1)@({self.a.switch_cpu})", cpus=str(self.a.switch_cpu),
            workdir=self.workdir, file_prefix=f"bench_ref_{os.getpid()}_{tag}",
            max_seconds=self.budget)
        self.live.append(ref)
        with ref:
            gen = self._generator(socks, size, tag, pairs)
            with gen:
                rates, cpu, gen_cpu = self._measure(gen, lambda: [ref.pid] if ref.pid else [])
                totals = gen.stop()
        return self._result(rates, cpu, gen_cpu, totals, size, 2 * pairs)

    def idle(self, nports, run):
        """nports attached ports that send nothing: the switch's CPU use."""
        tag = f"idle_{nports}_{run}"
        sw = self._switch(tag.replace("_", "-"))
        with sw:
            gen = self._generator([sw.sock], 64, tag, nports // 2, prime=0)
            with gen:
                gen.wait_ports_up(timeout=60)
                time.sleep(self.a.warmup)
                c0, t0 = cpu_ticks(sw.tree()), time.monotonic()
                time.sleep(self.a.seconds)
                cpu = cpu_percent(c0, cpu_ticks(sw.tree()), time.monotonic() - t0)
                mem = sw.memory()
                ports = sw.ports()
                gen.stop()
        active = sum(1 for p in ports or [] if p["state"] == "active")
        res = {"nports": nports, "cpu_percent": cpu, "active_ports": active,
               "sv3_ports": ports, "flowed": active == nports}
        return self._with_memory(res, mem, nports)

    def zeroloss(self, rate_pps, seconds, size=64):
        """Open loop: a paced source port and a sink port (benchlib/paced.py),
        the source pinned to the generator CPU."""
        sw = self._switch(f"zeroloss-{int(rate_pps)}")
        with sw:
            with self._as_generator():
                c0, t0 = cpu_ticks(sw.tree()), time.monotonic()
                res = paced.run(self.workdir, self.frontend_cls, sw.sock, *ZEROLOSS_MACS,
                                size, rate_pps, seconds)
                res["cpu_percent"] = cpu_percent(c0, cpu_ticks(sw.tree()), time.monotonic() - t0)
            rows = sw.ports(include_gone=True) or []
        src = next((r for r in rows if ZEROLOSS_MACS[0] in r["macs"]), None)
        dst = next((r for r in rows if ZEROLOSS_MACS[1] in r["macs"]), None)
        res["size"] = size
        res["sv3_ports"] = rows
        res["sv3_drops"] = sum(r["drops"] for r in rows)
        res["counters_agree"] = bool(src and dst and src["rx_frames"] == res["sent"]
                                     and dst["tx_frames"] == res["received"])
        res["flowed"] = res["received"] > 0
        res["zero_loss"] = (res["received"] == res["sent"] and res["lost"] == 0
                            and res["sv3_drops"] == 0)
        return res

    def sweep(self):
        for obj in self.live:
            try:
                obj.stop()
            except Exception as e:  # keep going: every process must be stopped
                log(f"cleanup of {obj!r} failed: {e}")
