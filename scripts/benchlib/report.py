"""Turns the scenarios' results into the benchmark's one table."""
from __future__ import annotations

import statistics


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _runs(m, runs):
    if m is None:
        return "-"
    return f"{m:.2f} (" + " ".join(f"{x:.2f}" for x in runs) + ")"


def _best(results):
    return max((x for r in results for x in r.get("rates") or []), default=None)


def _row(scenario, size, ports, sv3_runs, ref_name, ref_runs, results, notes="", ref_results=()):
    sv3_m, ref_m = _med(sv3_runs), _med(ref_runs)
    best, ref_best = _best(results), _best(ref_results)
    return {
        "scenario": scenario, "size": size, "ports": ports,
        "sv3_mpps": sv3_m, "sv3_runs": sv3_runs,
        "reference": ref_name, "ref_mpps": ref_m, "ref_runs": ref_runs,
        "ratio": sv3_m / ref_m if sv3_m is not None and ref_m else None,
        # runs alternate, so run i of both saw the same phase of the machine
        "paired": _med([a / b for a, b in zip(sv3_runs, ref_runs) if b])
        if len(sv3_runs) == len(ref_runs) else None,
        # the fastest second of each: both seen in a fast phase of the machine
        "best": best / ref_best if best and ref_best else None,
        "sv3_cpu_percent": _med([r.get("cpu_percent") for r in results]),
        "mib_per_port": _med([r.get("mib_per_port") for r in results]),
        "notes": notes,
    }


def summarize(res: dict) -> list[dict]:
    """One row per scenario (and frame size), in the order they ran."""
    rows = []
    loop = res.get("loop", {})
    for size, r in loop.items():
        rows.append(_row("loop", size, 2, [x["mpps"] for x in r["sv3"]], "testpmd io",
                         [x["mpps"] for x in r["ref"]], r["sv3"], ref_results=r["ref"]))
    p = res.get("pollus")
    if p:
        base = [x["mpps"] for x in loop.get(p["size"], {}).get("sv3", [])]
        rows.append(_row(f"loop --poll-us={p['poll_us']}", p["size"], 2,
                         [x["mpps"] for x in p["runs"]], "sv3 default", base, p["runs"],
                         ref_results=loop.get(p["size"], {}).get("sv3", [])))
    s = res.get("scale")
    if s:
        took = _med([x.get("attach_ms") for x in s["many"]])
        many = [x["mpps"] for x in s["many"]]
        rows.append(_row("scale", s["size"], 2 * s["pairs"], many, "sv3, 2 ports",
                         [x["mpps"] for x in s["two"]], s["many"],
                         f"attach of one more port {_fmt(took, '.1f')} ms under load",
                         ref_results=s["two"]))
        if s.get("ref"):
            rows.append(_row("scale", s["size"], 2 * s["pairs"], many,
                             f"testpmd io, {2 * s['pairs']} ports",
                             [x["mpps"] for x in s["ref"]], s["many"], ref_results=s["ref"]))
    i = res.get("idle")
    if i:
        rows.append(_row("idle", 64, i[0]["nports"], [], "-", [], i,
                         "ports attached, no traffic"))
    z = res.get("zeroloss")
    if z:
        row = _row("zero loss", z["size"], 2, [z["received_mpps"]], "offered",
                   [z["offered_mpps"]] if z["offered_mpps"] else [], [z])
        row["notes"] = (f"{z['seconds']:.0f} s open loop: lost {z['sent'] - z['received']} "
                        f"of {z['sent']}, sv3 drops {z['sv3_drops']}")
        rows.append(row)
    return rows


def table(rows, head: str) -> str:
    cols = ["scenario", "size", "ports", "sv3 Mpps (runs)", "reference", "ref Mpps (runs)",
            "sv3/ref", "paired", "best s", "sv3 CPU%", "MiB/port", "notes"]
    body = [[r["scenario"], str(r["size"]), str(r["ports"]),
             _runs(r["sv3_mpps"], r["sv3_runs"]), r["reference"],
             _runs(r["ref_mpps"], r["ref_runs"]), _fmt(r["ratio"]), _fmt(r["paired"]),
             _fmt(r["best"]),
             _fmt(r["sv3_cpu_percent"], ".1f"), _fmt(r["mib_per_port"], ".1f"), r["notes"]]
            for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def markdown(rows, head: str) -> str:
    """The same table for docs/performance.md."""
    out = [head, "", "| scenario | size | ports | sv3 Mpps (runs) | reference | ref Mpps (runs) "
           "| sv3/ref | paired | best s | sv3 CPU% | MiB/port | notes |", "|" + "---|" * 12]
    for r in rows:
        out.append("| " + " | ".join([
            r["scenario"], str(r["size"]), str(r["ports"]), _runs(r["sv3_mpps"], r["sv3_runs"]),
            r["reference"], _runs(r["ref_mpps"], r["ref_runs"]), _fmt(r["ratio"]),
            _fmt(r["paired"]), _fmt(r["best"]), _fmt(r["sv3_cpu_percent"], ".1f"), _fmt(r["mib_per_port"], ".1f"),
            r["notes"] or ""]) + " |")
    return "\n".join(out)
