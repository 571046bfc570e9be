"""scripts/bench --smoke, as CI runs it: every scenario for a few seconds.
It asserts that frames flowed and that the generators' and sv3's counters
agree, never a speed (speeds are the benchmark's business, on a quiet
machine, with references measured in the same run)."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers.switch import ROOT
from tests.helpers.testpmd import find_testpmd

pytestmark = pytest.mark.dpdk


def test_bench_smoke_frames_flow_and_counters_agree():
    find_testpmd()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench"), "--smoke", "--json"],
                       capture_output=True, text=True, timeout=600)
    info = r.stderr[-4000:]
    assert r.returncode == 0, info
    out = json.loads(r.stdout)
    assert out["status"] == 0 and out["smoke_failures"] == [] and out["failure"] is None, info
    res = out["results"]
    loop = res["loop"]["64"]["sv3"][0]
    assert loop["flowed"] and loop["mpps"] > 0, info
    assert all(p["drops"] == 0 for p in loop["sv3_ports"]), info
    assert len(res["scale"]["many"][0]["sv3_ports"]) == 4, info
    assert res["idle"][0]["active_ports"] == 4, info
    z = res["zeroloss"]
    assert z["sent"] > 100000 and z["received"] == z["sent"] and z["lost"] == 0, info
    assert z["counters_agree"] and z["sv3_drops"] == 0, info
    scenarios = [row["scenario"] for row in out["summary"]]
    assert scenarios == ["loop", "scale", "idle", "zero loss"], scenarios
