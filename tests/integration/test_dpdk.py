"""DPDK virtio-user through sv3: dpdk-testpmd with two ports on one switch
socket in loop mode (mac forwarding), for >= 10 s.  Installs dpdk-dev if
dpdk-testpmd is missing; never skips."""
import pytest

from tests.helpers.testpmd import MAC0, MAC1, LoopGenerator, find_testpmd

pytestmark = pytest.mark.dpdk
LOOP_FRAMES = 2 * 8 * 32        # start tx_first 8: 8 bursts of 32 per port


@pytest.mark.parametrize("size", [64, 1500])
def test_testpmd_loop_counters_agree(switch, size):
    find_testpmd()                   # installs dpdk-dev if needed
    with LoopGenerator(switch.socket, size=size) as gen:
        gen.wait_ports_up(60)
        rates = gen.rates(warmup=2, seconds=10)
        totals = gen.stop()
    rows = switch.wait_ports(lambda ps: len(ps) == 2 and all(p["state"] == "gone" for p in ps),
                             20, "both ports to detach", include_gone=True)
    by_mac = {r["macs"][0]: r for r in rows if len(r["macs"]) == 1}
    info = "rates %s\ntestpmd %s\nsv3 %s\n%s" % (rates, totals, rows, switch.log()[-3000:])
    print("loop %d B: median %.3f Mpps" % (size, sorted(rates)[len(rates) // 2]))
    assert min(rates) > 0.01, info                                # frames flowed all along
    assert " ERROR " not in switch.log() and "Traceback" not in switch.log(), info
    for index, mac in ((0, MAC0), (1, MAC1)):
        tp, sv = totals[index], by_mac[mac.lower()]
        # testpmd TX = what the switch received from that port and the other
        # way round; only frames circulating in the loop can be in flight.
        assert tp["tx_packets"] > 100000, info
        assert abs(tp["tx_packets"] - sv["rx_frames"]) <= LOOP_FRAMES, info
        assert abs(tp["rx_packets"] - sv["tx_frames"]) <= LOOP_FRAMES, info
        assert sv["drops"] == 0, info
