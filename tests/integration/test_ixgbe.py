"""The 82599 uplink (--uplink vfio:PCI) against the device model
(tests/fakes/ixgbe_model.py): the switch's own driver code (sv3/uplink/
ixgbe.py, ixgbe.c) runs unchanged; only the VFIO device underneath is the
model's socket instead of vfio-pci (SV3_VFIO_MODEL).  A test front-end
(tests/fakes/frontend.py) or a real QEMU guest is the other port."""
import threading
import time

import pytest

from tests.fakes import ixgbe_model as m
from tests.fakes.frontend import attach_port, frame, mac
from tests.fakes.wire_host import WireHost
from tests.helpers.switch import Switch

PCI = "0000:05:00.0"
WIRE, GUEST = mac(0x99), mac(0xA)


@pytest.fixture
def model(tmp_path):
    with m.Ixgbe82599Model(str(tmp_path / "model.sock")) as dev:
        yield dev


@pytest.fixture
def nic_switch(model):
    sw = Switch("--uplink", "vfio:" + PCI, env={"SV3_VFIO_MODEL": model.sock_path})
    sw.start()
    sw.wait_ports(lambda ps: [p["state"] for p in ps] == ["active"], 15, "the 82599 uplink active")
    yield sw
    sw.stop()
    assert model.errors == [], model.errors


def uplink(sw):
    return [p for p in sw.ports() if p["kind"] == "vfio"][0]


def numbered(dst, src, seq, size=60):
    return frame(dst, src, seq.to_bytes(4, "big") + bytes([seq & 0xFF]) * 40, size=size)


def learn_both(model, fe):
    """Each side sends one frame, so each MAC is learned on its port."""
    fe.post_rx()
    fe.send_frames([frame(WIRE, GUEST)])
    assert model.wait_sent(1, 5), "the guest's first frame never reached the wire"
    assert model.inject(frame(GUEST, WIRE)), "the NIC refused a frame"
    assert fe.recv_frames(1, 5)


def test_init_programs_the_device_like_the_datasheet(nic_switch, model):
    row = uplink(nic_switch)
    assert row["uplink"] == "vfio:" + PCI and row["state"] == "active", row
    assert model.peek(m.CTRL_EXT) & m.CTRL_EXT_DRV_LOAD
    assert model.peek(m.FCTRL) & (m.FCTRL_UPE | m.FCTRL_MPE | m.FCTRL_BAM) == \
        m.FCTRL_UPE | m.FCTRL_MPE | m.FCTRL_BAM, "not promiscuous"
    assert model.peek(m.HLREG0) & m.HLREG0_RXCRCSTRP and model.peek(m.RDRXCTL) & m.RDRXCTL_CRCSTRIP
    assert model.peek(m.TDWBAL) & m.TDWBAL_HEAD_WB_EN, "no TX head write-back"
    assert model.peek(m.LINKS) & m.LINKS_UP
    assert "82599 SFP+ (10fb) at %s, promiscuous, link up at 10 Gb/s" % PCI in nic_switch.log()


def test_frames_both_ways_many_batches_with_ring_wrap(nic_switch, model):
    fe, _ = attach_port(nic_switch)
    learn_both(model, fe)
    rounds, per = 12, 200                       # 2400 frames each way: the 512-slot rings wrap 4 times
    for r in range(rounds):
        sent = [numbered(GUEST, WIRE, r * per + i, size=60 + (i * 37) % 1455) for i in range(per)]
        assert all(model.inject(f) for f in sent), "the NIC ran out of RX descriptors"
        got = fe.recv_frames(per, 10)
        assert got == sent, "round %d: %d of %d frames, or damaged/reordered" % (r, len(got), per)
    for r in range(rounds):
        sent = [numbered(WIRE, GUEST, r * per + i, size=60 + (i * 53) % 1455) for i in range(per)]
        fe.send_frames(sent)
        got = model.wait_sent(per, 10)
        assert got == sent, "round %d: %d of %d frames on the wire" % (r, len(got), per)
        fe.reclaim_tx()
    bcast = frame(b"\xff" * 6, WIRE, b"broadcast")
    assert model.inject(bcast) and fe.recv_frames(1, 5) == [bcast]
    time.sleep(1.5)                             # the worker folds statistics every second
    row = uplink(nic_switch)
    n = rounds * per
    assert row["rx_frames"] >= n + 2 and row["tx_frames"] >= n + 1, row
    assert row["hw"]["rx_frames"] >= n + 2 and row["hw"]["tx_frames"] >= n + 1, row
    assert row["hw"]["rx_bytes"] > 60 * n and row["hw"]["rx_missed"] == 0, row
    assert row["drops"] == 0, row
    assert model.stats["rx_missed"] == 0


def test_link_down_and_up(nic_switch, model):
    fe, _ = attach_port(nic_switch)
    learn_both(model, fe)
    model.set_cable(False)
    nic_switch.wait_ports(lambda ps: uplink_state(ps) == "link-down", 5, "link-down")
    fe.send_frames([numbered(WIRE, GUEST, i) for i in range(50)])
    time.sleep(0.5)
    assert model.sent() == []
    model.set_cable(True)
    nic_switch.wait_ports(lambda ps: uplink_state(ps) == "active", 5, "link back up")
    fe.reclaim_tx()
    fe.send_frames([numbered(WIRE, GUEST, 1000)])
    assert model.wait_sent(1, 5) == [numbered(WIRE, GUEST, 1000)]
    row = uplink(nic_switch)
    assert row["drop_detail"].get("drop_link_down") == 50, row
    assert "link down" in nic_switch.log() and "link up" in nic_switch.log()


def uplink_state(ports):
    return [p["state"] for p in ports if p["kind"] == "vfio"][0]


def test_device_reset_under_traffic(nic_switch, model):
    """The device resets itself while frames flow both ways: the worker
    notices (DRV_LOAD clear), initialises it again, and traffic resumes."""
    fe, _ = attach_port(nic_switch)
    learn_both(model, fe)
    stop, injected = threading.Event(), []

    def wire_source():
        seq = 0
        while not stop.is_set():
            if model.inject(numbered(GUEST, WIRE, seq)):
                injected.append(seq)
            seq += 1
            time.sleep(0.0005)
    src = threading.Thread(target=wire_source)
    src.start()
    try:
        assert len(fe.recv_frames(100, 10)) >= 100
        model.device_reset()
        nic_switch.wait_ports(lambda ps: "initialised it again" in nic_switch.log(), 10,
                              "the reset to be noticed")
        mark = injected[-1]
        after = wait_seqs_above(fe, mark, 200, 10)
    finally:
        stop.set()
        src.join()
    assert len(after) >= 200, (len(after), mark, len(injected))
    fe.send_frames([numbered(WIRE, GUEST, 7)])
    assert numbered(WIRE, GUEST, 7) in model.wait_sent(1, 5)
    assert "initialised it again" in nic_switch.log()


def wait_seqs_above(fe, mark, n, timeout):
    """Sequence numbers above mark among the frames the guest receives."""
    seqs, deadline = [], time.monotonic() + timeout
    while len(seqs) < n and time.monotonic() < deadline:
        seqs += [s for s in (int.from_bytes(f[14:18], "big") for f in fe.recv_frames(1, 0.2)) if s > mark]
    return seqs


@pytest.mark.guest
def test_qemu_guest_pings_a_host_on_the_modelled_wire(nic_switch, model):
    """A real guest pings 10.55.0.9, a host (tests/fakes/wire_host.py) on
    the far side of the modelled 82599: ARP and ICMP both ways through the
    master's forwarding, the uplink worker and the driver."""
    from tests.helpers.guest import Guest, ensure_guest_image, ensure_qemu, ping_cmd
    ensure_qemu()
    ensure_guest_image()
    host = WireHost("02:00:00:00:00:09", "10.55.0.9")
    stop = threading.Event()

    def wire():
        while not stop.is_set():
            for f in model.wait_sent(1, 0.2):
                for reply in host.handle(f):
                    model.inject(reply)
    t = threading.Thread(target=wire)
    t.start()
    try:
        g = Guest("g1", "52:54:00:55:00:01", nic_switch.socket, "10.55.0.1/24", cmd=ping_cmd("10.55.0.9"))
        with g:
            g.start()
            r = g.wait()
    finally:
        stop.set()
        t.join()
    info = "%s\n%s" % (r.tail(30), nic_switch.log()[-3000:])
    ping = r.find("ping")
    assert r.exit_code == 0 and ping and int(ping["received"]) >= 20, info
    assert host.bad_checksums == 0, info
    print("guest <-> modelled wire: %s/%s pings, rtt %s ms" % (ping["received"], ping["sent"], ping["rtt_avg"]))


@pytest.mark.parametrize("device_id,accepted", [(0x10FB, True), (0x1557, True), (0x151C, True),
                                                (0x10ED, False), (0x1528, False)])
def test_device_ids(tmp_path, monkeypatch, device_id, accepted):
    """Every 82599 physical function is driven; virtual functions and other
    chips are refused with a reason, and nothing is left mapped."""
    from sv3.uplink import ixgbe
    path = str(tmp_path / "model.sock")
    monkeypatch.setenv("SV3_VFIO_MODEL", path)
    with m.Ixgbe82599Model(path, device_id=device_id) as dev:
        if accepted:
            nic = ixgbe.Ixgbe82599(PCI)
            try:
                nic.init()
                assert nic.link_up() and "(%04x)" % device_id in nic.model
            finally:
                nic.shutdown()
                nic.close()
        else:
            with pytest.raises(ixgbe.DeviceError, match="virtual function|not an Intel 82599"):
                ixgbe.Ixgbe82599(PCI)
        deadline = time.monotonic() + 2
        while dev.dma_mappings() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dev.dma_mappings() == [] and dev.errors == [], dev.errors


def test_tso_from_a_guest_leaves_the_nic_as_checked_segments(nic_switch, model):
    """The 82599 port takes no offloads: a guest's 64 KB TSO frame is cut by
    the sending worker, and the wire sees MSS-sized frames with valid
    checksums (verified with scapy)."""
    from tests.helpers.packets import SENDER, check_segments, tso_frame
    fe, _ = attach_port(nic_switch, features=SENDER)
    learn_both(model, fe)
    for v6 in (False, True):
        raw, hdr, payload = tso_frame(WIRE, v6=v6)
        fe.tx.add_tx(raw, hdr=hdr)
        fe.kick_vring(1)
        check_segments(model.wait_sent(15, 5), payload, 1400, v6)
    row = [p for p in nic_switch.ports() if p["kind"] == "guest"][0]
    assert row["sw_segmented"] == 2 and row["offload_frames"] == 2, row
