"""Prove the guest tooling (scripts/build-guest, contrib/qemu/sv3-qemu,
tests/helpers) against the known-good reference backend, dpdk-testpmd with
two net_vhost ports.  If this fails, the tooling is broken, not sv3."""

import os

import pytest

from tests.helpers.guest import (Guest, ensure_guest_image, ensure_qemu, feature_bit,
                                 iperf_client_cmd, iperf_server_cmd, ping_cmd)
from tests.helpers.testpmd import RefSwitch, find_testpmd

MAC_A, MAC_B = "52:54:00:55:00:01", "52:54:00:55:00:02"
IP_A, IP_B = "10.55.0.1", "10.55.0.2"


def _describe(name, r):
    return "--- guest %s: %r\n%s" % (name, r, r.tail(40))


@pytest.mark.guest
def test_ping_and_iperf_through_reference_backend(tmp_path):
    ensure_qemu()
    find_testpmd()
    ensure_guest_image()
    sock0, sock1 = (os.path.join(tmp_path, "ref%d.sock" % i) for i in (0, 1))

    with RefSwitch([sock0, sock1], max_seconds=300):
        a = Guest("a", MAC_A, sock0, IP_A + "/24", cmd=iperf_server_cmd())
        b = Guest("b", MAC_B, sock1, IP_B + "/24",
                  cmd=ping_cmd(IP_A, count=20, interval=0.2) + iperf_client_cmd(IP_A, seconds=5))
        with a, b:
            a.start()
            b.start()
            rb = b.wait()
            ra = a.wait()

    info = _describe("a", ra) + "\n" + _describe("b", rb)
    for name, r, mac, ip in (("a", ra, MAC_A, IP_A), ("b", rb, MAC_B, IP_B)):
        print("guest %s: status after %.1f s, result lines %s, exit after %.1f s"
              % (name, r.time_of("status") or -1, [l["kind"] for l in r.lines], r.elapsed))
        assert not r.timed_out, info
        assert r.status.get("mac") == mac, info
        assert r.status.get("ip") == ip + "/24", info
        assert r.status.get("queues") == "1", info
        assert feature_bit(r.status.get("features", ""), 32), info    # VERSION_1
        assert r.exit_code == 0, info

    ping = rb.find("ping")
    iperf = rb.find("iperf")
    server = ra.find("iperf_server")
    print("ping:", ping, "(first result %.1f s)" % rb.time_of("ping"))
    print("iperf:", iperf, "server:", server)
    assert ping is not None, info
    assert int(ping["sent"]) == 20 and int(ping["received"]) >= 20, info
    assert iperf is not None and iperf["rc"] == "0", info
    assert float(iperf["mbps"]) > 1, info
    assert server is not None and server["rc"] == "0", info
