"""The AF_PACKET uplink (--uplink af_packet:IFACE): a real QEMU guest on
sv3 and a veth end in a network namespace reach each other through it.

Everything lives in two namespaces the test creates (tests/helpers/netns.py):
the switch runs in one with the veth end it owns, the far end has
10.55.0.9 in the other.  Never skips: QEMU and the guest image are
installed or built on demand."""
import time

import pytest

from tests.helpers.guest import (Guest, ensure_guest_image, ensure_qemu, iperf_client_cmd,
                                 ping_cmd)
from tests.helpers.netns import PEER_IP, VethPair
from tests.helpers.switch import Switch
from tests.helpers.faults import replies, stream_ping_cmd

GUEST_MAC, GUEST_IP = "52:54:00:55:00:01", "10.55.0.1"


@pytest.fixture
def net():
    with VethPair() as n:
        yield n


@pytest.fixture
def uplinked(net):
    sw = Switch("--uplink", "af_packet:" + net.sw_if, netns=net.sw)
    sw.start()
    sw.wait_ports(lambda ps: [p["state"] for p in ps] == ["active"], 15, "the uplink active")
    yield sw
    sw.stop()


def uplink_row(sw):
    return [p for p in sw.ports() if p["kind"] == "af_packet"][0]


def explain(sw, *results):
    return "\n".join(["--- %r\n%s" % (r, r.tail(30)) for r in results] +
                     ["--- ports %s" % sw.ports(), "--- switch log", sw.log()[-4000:]])


def test_uplink_learns_the_far_side_without_a_guest(net, uplinked):
    """The far end's broadcasts (ARP) reach the uplink, which learns its MAC."""
    net.run(net.peer, "ping", "-c", "3", "-i", "0.2", "-W", "1", "10.55.0.77")
    peer_mac = net.mac(net.peer, net.peer_if)
    fdb = {e["mac"]: e["port"] for e in uplinked.fdb()}
    row = uplink_row(uplinked)
    assert fdb.get(peer_mac) == row["port"], (fdb, uplinked.log())
    assert row["rx_frames"] >= 3 and row["uplink"] == "af_packet:" + net.sw_if, row


def test_guest_and_namespace_ping_and_tcp_both_ways(net, uplinked):
    ensure_qemu()
    ensure_guest_image()
    server = net.popen(net.peer, "iperf3", "-s", "-f", "m")
    g = Guest("g1", GUEST_MAC, uplinked.socket, GUEST_IP + "/24",
              cmd=ping_cmd(PEER_IP) + iperf_client_cmd(PEER_IP, seconds=5)
              + iperf_client_cmd(PEER_IP, seconds=5, reverse=True))
    with g:
        g.start()
        r = g.wait()
    info = explain(uplinked, r)
    assert r.exit_code == 0 and not r.timed_out, info
    ping = r.find("ping")
    assert int(ping["sent"]) == 20 and int(ping["received"]) >= 20, info
    up, down = r.find_all("iperf")
    for run in (up, down):
        assert run["rc"] == "0" and float(run["mbps"]) > 1.0, info
    row = uplink_row(uplinked)
    fdb = {e["mac"]: e["port"] for e in uplinked.fdb()}
    assert fdb.get(net.mac(net.peer, net.peer_if)) == row["port"], info
    # TCP from the namespace leaves its veth as 64 KiB GSO frames with partial
    # checksums: they reach the guest (GUEST_TSO4 on) as they are.
    assert row["offload_frames"] > 0, row
    print("guest -> namespace %s Mbit/s, namespace -> guest %s Mbit/s, ping rtt %s ms; uplink "
          "took %d offloaded frames, segmented %d, completed %d checksums, drops %s" % (
              up["mbps"], down["mbps"], ping["rtt_avg"], row["offload_frames"], row["sw_segmented"],
              row["sw_checksummed"], row["drop_detail"]))
    assert server.poll() is None, "iperf3 server died"


def test_link_down_and_up_is_survived(net, uplinked):
    """The far end goes down for 3 s, then the switch's own end: the guest's
    pings stop, the uplink says link-down and drops what it gets, and the
    pings come back after each up."""
    ensure_qemu()
    ensure_guest_image()
    g = Guest("g1", GUEST_MAC, uplinked.socket, GUEST_IP + "/24",
              cmd=stream_ping_cmd(PEER_IP, seconds=40, interval=0.2, wait=90))
    with g:
        g.start()
        uplinked.wait_ports(lambda ps: len(ps) == 2 and all(p["state"] == "active" for p in ps),
                            90, "guest active")
        wait_replies(net, 10)
        states = []
        for ns, ifname in ((net.peer, net.peer_if), (net.sw, net.sw_if)):
            net.set_link(ns, ifname, False)
            states.append(uplinked.wait_ports(lambda ps: uplink_state(ps) == "link-down", 10,
                                              "uplink link-down"))
            time.sleep(3)
            net.set_link(ns, ifname, True)
            uplinked.wait_ports(lambda ps: uplink_state(ps) == "active", 10, "uplink active")
            wait_replies(net, 10)
        r = g.wait()
    info = explain(uplinked, r)
    seqs = replies(r.log, PEER_IP)
    assert r.exit_code == 0 and len(seqs) > 40, info
    row = uplink_row(uplinked)
    assert row["drop_detail"].get("drop_link_down", 0) > 0, row
    assert "link down" in uplinked.log() and "link up" in uplinked.log(), info
    print("pings answered %d; uplink drops while down: %s" % (len(seqs), row["drop_detail"]))


def uplink_state(ports):
    return [p["state"] for p in ports if p["kind"] == "af_packet"][0]


def wait_replies(net, n, timeout=60):
    """Until the far end has sent n more ICMP echo replies (its tx counter)."""
    start = net.counters(net.peer, net.peer_if)[1]
    deadline = time.monotonic() + timeout
    while net.counters(net.peer, net.peer_if)[1] < start + n:
        assert time.monotonic() < deadline, "the far end stopped answering"
        time.sleep(0.2)


def test_interface_removed_and_back(net, uplinked):
    """The uplink's interface disappears: its worker leaves, the master
    starts it again once the interface is back, and learning resumes."""
    first = uplink_row(uplinked)
    net.unplug()
    uplinked.wait_ports(lambda ps: not any(p["kind"] == "af_packet" for p in ps), 10, "uplink gone")
    time.sleep(1.5)
    net.plug()
    again = uplinked.wait_ports(lambda ps: any(p["kind"] == "af_packet" and p["state"] == "active"
                                               for p in ps), 60, "uplink back")
    row = [p for p in again if p["kind"] == "af_packet"][0]
    assert row["port"] != first["port"], again
    net.run(net.peer, "ping", "-c", "3", "-i", "0.2", "-W", "1", "10.55.0.77")
    fdb = {e["mac"]: e["port"] for e in uplinked.fdb()}
    assert fdb.get(net.mac(net.peer, net.peer_if)) == row["port"], (fdb, uplinked.log()[-3000:])
    assert "was removed" in uplinked.log(), uplinked.log()
