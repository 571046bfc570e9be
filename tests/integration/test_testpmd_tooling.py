"""The testpmd tooling itself: LoopGenerator (no hugepages) against RefSwitch.

RefSwitch is the known-good backend (testpmd, two net_vhost ports, io
forwarding).  If this test fails, the tooling is wrong, not sv3.
Needs dpdk-testpmd (package dpdk-dev); placement: RefSwitch lcores on CPU 0,
generator lcores on CPU 1.
"""

import os
import shutil
import statistics
import tempfile

import pytest

from tests.helpers.testpmd import LoopGenerator, RefSwitch

pytestmark = pytest.mark.dpdk


@pytest.fixture
def sockdir():
    # Short path: AF_UNIX socket paths are limited to 107 bytes.
    d = tempfile.mkdtemp(prefix="sv3-tpmd-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_loop_generator_through_ref_switch(sockdir, tmp_path):
    socks = [os.path.join(sockdir, "ref0.sock"), os.path.join(sockdir, "ref1.sock")]
    with RefSwitch(socks, workdir=str(tmp_path / "ref"), max_seconds=120) as ref:
        with LoopGenerator(socks, size=64, workdir=str(tmp_path / "gen"),
                           max_seconds=90) as gen:
            gen.wait_ports_up(timeout=30)
            rates = gen.rates(warmup=2, seconds=5)
            gen_totals = gen.stop()
        ref_totals = ref.stop()

    # The ref removed its own sockets; nothing is left running.
    assert not any(os.path.lexists(s) for s in socks)
    assert not gen.alive() and not ref.alive()

    assert len(rates) == 5
    median = statistics.median(rates)
    assert median > 0.05, f"loop rate too low: {rates} Mpps\n{gen.log_tail()}"

    assert set(gen_totals) == {0, 1}, gen.log_tail()
    for port in (0, 1):
        t = gen_totals[port]
        assert t["rx_packets"] > 0 and t["tx_packets"] > 0, gen_totals
    # Both ends count the same frames: what one side sent the other received
    # (give or take the 8 x 32 frames per port that were in flight).
    assert set(ref_totals) == {0, 1}, ref.log_tail()
    for port in (0, 1):
        assert ref_totals[port]["rx_packets"] > 0
        assert abs(ref_totals[port]["rx_packets"]
                   - gen_totals[port]["tx_packets"]) <= 8 * 32
