"""A matrix of real QEMU guest pairs (TCG) on one sv3 switch, the two sides
using different virtio-net-pci options.  Per pair: each guest's negotiated
feature bits, iperf3 TCP both ways over IPv4 and IPv6, and a 4 MiB random
file A->B over IPv4 and B->A over IPv6 whose sha256 must match.  Needs
scripts/build-guest's image and qemu-system-x86 (both made on demand);
never skips.

Guest B is the iperf3 client (-c and -R, so both directions), guest A the
server.  Each guest runs its steps in order and rendezvouses by retrying:

    A: make /tmp/d | 4 x iperf3 -s -1 | send /tmp/d to B:5001 (v4) | listen :5002
    B: make /tmp/d | 4 x iperf3 -c    | listen :5001 | send /tmp/d to [A]:5002 (v6)
"""
import time

import pytest

from tests.helpers.guest import (Guest, ensure_guest_image, ensure_qemu, feature_bit,
                                 iperf_client_cmd, iperf_server_cmd)

pytestmark = pytest.mark.guest

MAC = ("52:54:00:55:00:01", "52:54:00:55:00:02")
IP = ("10.55.0.1", "10.55.0.2")
IP6 = ("fd55::1", "fd55::2")
NBYTES = 4 << 20            # random data per transfer
IPERF_S = 3                 # seconds per iperf3 run (4 runs per pair)
GUEST_TIMEOUT = 200         # host-side bound per QEMU

# --------------------------------------------------------------------------
# what a guest should negotiate

BITS = {0: "CSUM", 1: "GUEST_CSUM", 3: "MTU", 7: "GUEST_TSO4", 8: "GUEST_TSO6", 9: "GUEST_ECN",
        10: "GUEST_UFO", 11: "HOST_TSO4", 12: "HOST_TSO6", 13: "HOST_ECN", 14: "HOST_UFO",
        15: "MRG_RXBUF", 22: "MQ", 28: "INDIRECT_DESC", 29: "EVENT_IDX", 32: "VERSION_1",
        34: "RING_PACKED"}
# What sv3 offers (sv3/vhost/backend.py FEATURES): VERSION_1, MRG_RXBUF,
# EVENT_IDX, INDIRECT_DESC, checksum/TSO/ECN both ways, MTU, MQ; never UFO or
# RING_PACKED.  Change this one set when the offer changes.
OFFERED = {32, 15, 29, 28, 0, 1, 11, 12, 13, 7, 8, 9, 3, 22}
# QEMU 7.2 virtio-net-pci property -> (feature bit, default)
PROPS = {"csum": (0, True), "guest_csum": (1, True), "host_mtu": (3, False),
         "guest_tso4": (7, True), "guest_tso6": (8, True), "guest_ecn": (9, True),
         "guest_ufo": (10, True), "host_tso4": (11, True), "host_tso6": (12, True),
         "host_ecn": (13, True), "host_ufo": (14, True), "mrg_rxbuf": (15, True),
         "mq": (22, False), "indirect_desc": (28, True), "event_idx": (29, True),
         "packed": (34, False)}
VERSION_1 = 32              # asked for unless disable-modern=on (a legacy-only device)


def expected_bits(device_opts):
    """(must_have, must_not_have) feature bits for a guest whose
    virtio-net-pci carries `device_opts`: bit b is negotiated iff sv3 offers
    it and the guest's QEMU property for it is on."""
    on = {k: dflt for k, (_, dflt) in PROPS.items()}
    modern = True
    for kv in filter(None, device_opts.split(",")):
        k, _, v = kv.partition("=")
        if k == "host_mtu":                 # a number: advertised when set
            on[k] = True
        elif k in PROPS or k == "disable-modern":
            flag = v.lower() in ("on", "true", "yes", "1")
            if k in PROPS:
                on[k] = flag
            else:
                modern = not flag
    asked = {PROPS[k][0] for k, v in on.items() if v} | ({VERSION_1} if modern else set())
    must = asked & OFFERED
    return must, (set(BITS) - must)


# --------------------------------------------------------------------------
# the matrix

NO_GUEST_GSO = "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"
# name -> virtio-net-pci options, or a dict of Guest keyword arguments
VARIANTS = {
    "defaults": "",
    # no checksum offload at all (TSO/UFO depend on csum, so all of them off)
    "nocsum": "csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,"
              "host_ufo=off," + NO_GUEST_GSO,
    "noguestgso": NO_GUEST_GSO,                 # takes no TSO frames, sends them
    "nomrg": "mrg_rxbuf=off",
    "noevidx": "event_idx=off",
    "noindirect": "indirect_desc=off",
    "nohosttso": "host_tso4=off,host_tso6=off",  # sends csum-partial frames, never TSO
    "mq2": dict(device_opts="mq=on", queues=2, smp=2),      # status queues=2, MQ bit
    "jumbo": dict(device_opts="host_mtu=9000", mtu=9000),   # on BOTH sides: jumbo-jumbo
    # Legacy-only device: QEMU 7.2 accepts it with vhost-user on q35 (the NIC
    # sits on pcie.0, where legacy is allowed); VERSION_1 is not negotiated.
    "legacy": dict(device_opts="disable-modern=on,disable-legacy=off"),
}
# (A, B); each variant at least once.  Mixed offload pairs make sv3 bridge
# the difference: TSO/partial-csum frames toward a guest that cannot take them.
PAIRS = [("defaults", "defaults"), ("nocsum", "defaults"), ("noguestgso", "defaults"),
         ("nohosttso", "nocsum"), ("nomrg", "noindirect"), ("noevidx", "noguestgso"),
         ("mq2", "defaults"), ("jumbo", "jumbo"), ("legacy", "defaults")]


def guest_kw(variant):
    v = VARIANTS[variant]
    return dict(device_opts=v) if isinstance(v, str) else dict(v)


@pytest.fixture(scope="module", autouse=True)
def guest_tools():
    ensure_qemu()
    ensure_guest_image()


# --------------------------------------------------------------------------
# guest-side snippets (busybox sh; every step prints one SV3 line)

def make_data_cmd(role):
    return (f"head -c {NBYTES} /dev/urandom >/tmp/d\n"
            f'echo "SV3 sha role={role} sum=$(sha256sum /tmp/d | cut -c1-64) bytes=$(stat -c %s /tmp/d)"\n')


def send_cmd(peer, port, wait=60):
    """Send /tmp/d to peer:port with busybox nc, retrying until the listener
    is up.  Prints 'SV3 send port=P rc=RC tries=N'."""
    return f"""\
t0=$(date +%s); n=0
while :; do n=$((n+1)); timeout 60 nc {peer} {port} </tmp/d >/dev/null 2>/tmp/nc.err && {{ rc=0; break; }}; rc=$?; [ $(date +%s) -ge $((t0+{wait})) ] && break; sleep 1; done
echo "SV3 send port={port} rc=$rc tries=$n"
"""


def recv_cmd(port, role, timeout=90):
    """Accept one connection on port, store what arrives in /tmp/r.  busybox
    nc copies its own stdin to the peer and half-closes on stdin EOF, which
    would end the sender early; -e hands the socket to cat instead."""
    return f"""\
: >/tmp/r; timeout {timeout} nc -l -p {port} -e sh -c 'cat >/tmp/r'; rc=$?
echo "SV3 sha role={role} sum=$(sha256sum /tmp/r | cut -c1-64) bytes=$(stat -c %s /tmp/r) rc=$rc"
"""


def script_a():
    return (make_data_cmd("tx4") + iperf_server_cmd(timeout=120)
            + iperf_server_cmd(timeout=45) * 3
            + send_cmd(IP[1], 5001) + recv_cmd(5002, "rx6") + "echo SV3 done\n")


def script_b():
    c = lambda ip, **kw: iperf_client_cmd(ip, seconds=IPERF_S, **kw)  # noqa: E731
    return (make_data_cmd("tx6") + c(IP[0], wait=100) + c(IP[0], reverse=True, wait=30)
            + c(IP6[0], extra="-6", wait=30) + c(IP6[0], reverse=True, extra="-6", wait=30)
            + recv_cmd(5001, "rx4") + send_cmd(IP6[0], 5002) + "echo SV3 done\n")


# --------------------------------------------------------------------------
# host side

def explain(sw, *results):
    return "\n".join(["--- %r\n%s" % (r, r.tail(40)) for r in results]
                     + ["--- switch log", sw.log()[-4000:]])


def sha(r, role):
    for d in r.find_all("sha"):
        if d.get("role") == role:
            return d
    return {}


def check_status(name, variant, r, problems):
    kw = guest_kw(variant)
    feats = r.status.get("features", "")
    must, must_not = expected_bits(kw.get("device_opts", ""))
    lacks = [BITS[b] for b in sorted(must) if not feature_bit(feats, b)]
    extra = [BITS[b] for b in sorted(must_not) if feature_bit(feats, b)]
    if not feats or lacks or extra:
        problems.append("guest %s (%s) features=%s: lacks %s, has unexpected %s"
                        % (name, variant, feats or "?", lacks, extra))
    want = {"queues": str(kw.get("queues", 1)), "mtu": str(kw.get("mtu", 1500))}
    got = {k: r.status.get(k) for k in want}
    if got != want:
        problems.append("guest %s (%s) status %s, want %s" % (name, variant, got, want))


def check_sha(what, tx, rx, problems):
    ok = bool(tx.get("sum")) and tx.get("sum") == rx.get("sum") and rx.get("bytes") == str(NBYTES)
    if not ok:
        problems.append("%s transfer: sent %s, received %s" % (what, tx or "nothing", rx or "nothing"))
    return ok


@pytest.mark.parametrize("va,vb", PAIRS, ids=["%s-%s" % p for p in PAIRS])
def test_pair_features_tcp_and_data(switch, va, vb):
    t0 = time.monotonic()
    a = Guest("a", MAC[0], switch.socket, IP[0] + "/24", ip6=IP6[0] + "/64", cmd=script_a(),
              timeout=GUEST_TIMEOUT, **guest_kw(va))
    b = Guest("b", MAC[1], switch.socket, IP[1] + "/24", ip6=IP6[1] + "/64", cmd=script_b(),
              timeout=GUEST_TIMEOUT, **guest_kw(vb))
    with a, b:
        a.start()
        b.start()
        rb, ra = b.wait(), a.wait()
    wall = time.monotonic() - t0
    info = explain(switch, ra, rb)

    problems = []
    for name, r in (("A", ra), ("B", rb)):
        if r.timed_out or r.exit_code != 0:
            problems.append("guest %s did not finish: timed_out=%s exit=%s"
                            % (name, r.timed_out, r.exit_code))
    check_status("A", va, ra, problems)
    check_status("B", vb, rb, problems)

    runs = rb.find_all("iperf")
    labels = ("v4 B->A", "v4 A->B", "v6 B->A", "v6 A->B")
    mbps = {}
    for i, label in enumerate(labels):
        run = runs[i] if i < len(runs) else {}
        mbps[label] = run.get("mbps", "-")
        try:
            good = run.get("rc") == "0" and float(run.get("mbps", 0)) > 1.0
        except ValueError:
            good = False
        if not good:
            problems.append("iperf3 %s: %s" % (label, run or "no result"))

    sha4 = check_sha("v4 A->B", sha(ra, "tx4"), sha(rb, "rx4"), problems)
    sha6 = check_sha("v6 B->A", sha(rb, "tx6"), sha(ra, "rx6"), problems)
    for name, r in (("A", ra), ("B", rb)):
        s = r.find("send")
        if not s or s.get("rc") != "0":
            problems.append("guest %s nc send: %s" % (name, s or "no result"))

    def t(r, kind):
        v = r.time_of(kind)
        return "%.1f" % v if v is not None else "-"

    print("\nPAIR %s<->%s: wall %.0fs, status at %s/%ss; Mbit/s %s; sha v4 %s v6 %s; "
          "features A=%s B=%s%s"
          % (va, vb, wall, t(ra, "status"), t(rb, "status"),
             ", ".join("%s %s" % kv for kv in mbps.items()),
             "ok" if sha4 else "BAD", "ok" if sha6 else "BAD",
             ra.status.get("features", "?"), rb.status.get("features", "?"),
             "".join("\n  FAIL " + p for p in problems)))
    assert not problems, "\n".join(problems) + "\n" + info
