"""Slow or stuck peers: a receiver that never refills its RX ring, or a
guest that stops kicking, costs drops on its own port only; no worker ever
waits on another port's ring, and a healthy pair forwards on losslessly."""
import time

from tests.fakes.frontend import BROADCAST, TrafficPair, attach_port, frame, mac

MAC_STUCK, MAC_SENDER = mac(0x5C), mac(0x5D)


def row(switch, port):
    return next(p for p in switch.ports() if p["port"] == port)


def test_stuck_receiver_only_costs_its_own_port(switch):
    a, _ = attach_port(switch)
    b, _ = attach_port(switch)
    pair = TrafficPair(a, b, rate=2000).start()
    stuck, row_stuck = attach_port(switch)          # never posts RX buffers
    sender, row_sender = attach_port(switch)
    fes = [a, b, stuck, sender]
    try:
        stuck.send_frames([frame(BROADCAST, MAC_STUCK)])      # the switch learns its MAC
        switch.wait_ports(lambda ps: any(MAC_STUCK.hex(":") in p["macs"] for p in ps), 10, "stuck MAC")
        pair.wait_progress(200)
        sent, deadline = 0, time.monotonic() + 6
        while time.monotonic() < deadline:          # hammer the stuck port for a while
            sender.reclaim_tx()
            free = len(sender.tx.free)
            if free:
                sender.send_frames([frame(MAC_STUCK, MAC_SENDER, b"x", 1000)] * min(free, 64))
                sent += min(free, 64)
            time.sleep(0.001)
        pair.wait_progress(200)                     # the pair still moves
        summary = pair.stop()
        r_stuck, r_sender = row(switch, row_stuck["port"]), row(switch, row_sender["port"])
    finally:
        pair.stop(drain_timeout=0)
        for fe in fes:
            fe.close()
    info = "pair %s\nstuck %s\nsender %s\n%s" % (summary, r_stuck, r_sender, switch.log()[-2000:])
    print("sent %d frames at a stuck receiver: its drop_ring_full %d; pair %s"
          % (sent, r_stuck["drop_detail"].get("drop_ring_full", 0), summary["received"]))
    assert sent > 5000, info                        # the sender was never blocked
    assert r_sender["rx_frames"] >= sent - 256, info
    assert r_stuck["tx_frames"] == 0, info
    assert r_stuck["drop_detail"].get("drop_ring_full", 0) > 0, info
    assert summary["lost"] == [0, 0] and summary["error"] is None, info
    assert r_sender["state"] == r_stuck["state"] == "active", info


def test_guest_that_stops_kicking_only_stalls_itself(switch):
    a, _ = attach_port(switch)
    b, _ = attach_port(switch)
    pair = TrafficPair(a, b, rate=2000).start()
    quiet, row_quiet = attach_port(switch)
    try:
        quiet.post_rx()
        quiet.send_frames([frame(BROADCAST, mac(0x51))] * 8, kick=False)   # never kicked
        pair.wait_progress(500)
        summary = pair.stop()
        r_quiet = row(switch, row_quiet["port"])
    finally:
        pair.stop(drain_timeout=0)
        for fe in (a, b, quiet):
            fe.close()
    assert summary["lost"] == [0, 0] and summary["error"] is None, summary
    assert r_quiet["state"] == "active", r_quiet
