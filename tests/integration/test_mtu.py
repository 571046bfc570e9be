"""Per-port MTU: the switch's --mtu (default 1500), or the value QEMU's
host_mtu sends (vhost-user NET_SET_MTU).  Frames above a port's MTU are
dropped and counted on that port, on the way in and on the way out."""
from tests.fakes.frontend import (DEFAULT_PROTOCOL_FEATURES, U64, attach_port, frame, mac)

NET_SET_MTU, PROTOCOL_F_NET_MTU = 20, 4
A, B, C = mac(0xA), mac(0xB), mac(0xC)


def port(switch, m, mtu=None):
    fe, _ = attach_port(switch, protocol_features=DEFAULT_PROTOCOL_FEATURES | 1 << PROTOCOL_F_NET_MTU)
    if mtu:
        assert fe.set(NET_SET_MTU, U64.pack(mtu), need_reply=True) == 0
    fe.post_rx()
    fe.send_frames([frame(b"\xff" * 6, m)])
    return fe


def oversize(switch, m):
    row = [p for p in switch.ports() if m in p["macs"]][0]
    return row["drop_detail"].get("drop_oversize", 0)


def test_jumbo_frames_between_jumbo_ports_only(switch):
    a, b, c = port(switch, A, 9000), port(switch, B), port(switch, C, 9000)
    switch.wait_ports(lambda ps: sum(len(p["macs"]) for p in ps) == 3, 10, "3 MACs")
    for fe in (a, b, c):
        fe.poll_frames()
    jumbo = frame(C, A, b"j", size=9014)
    a.send_frames([jumbo, frame(B, A, b"too big", size=9014), frame(B, A, b"fits", size=1514)])
    assert c.recv_frames(1, 5) == [jumbo]
    assert b.recv_frames(1, 5) == [frame(B, A, b"fits", size=1514)]
    b.send_frames([frame(A, B, b"too big", size=1519), frame(A, B, b"ok", size=1518)])
    assert a.recv_frames(1, 5) == [frame(A, B, b"ok", size=1518)]
    fmt = [":".join("%02x" % x for x in m) for m in (A, B)]
    assert oversize(switch, fmt[1]) == 2 and oversize(switch, fmt[0]) == 0
    assert "MTU 9000" in switch.log()
    assert port_refuses_mtu(switch, 20)


def port_refuses_mtu(switch, mtu):
    fe, _ = attach_port(switch, protocol_features=DEFAULT_PROTOCOL_FEATURES | 1 << PROTOCOL_F_NET_MTU)
    try:
        return fe.set(NET_SET_MTU, U64.pack(mtu), need_reply=True) != 0
    finally:
        fe.close()
