"""Network namespaces and a veth pair for uplink tests.

    with VethPair() as net:                  # two namespaces the test owns
        Switch("--uplink", "af_packet:" + net.sw_if, netns=net.sw)
        net.popen(net.peer, "iperf3", "-s")  # the far end, 10.55.0.9/24

The switch's end (net.sw_if, in namespace net.sw) carries no address; the
far end (net.peer_if in net.peer) has PEER_IP.  Nothing is created in the
host's namespace.  Processes started with popen() are stopped by their PID
when the pair is torn down, then both namespaces are deleted."""
import json
import os
import signal
import subprocess

from .procs import stop_session

PEER_IP = "10.55.0.9"
PEER_IP6 = "fd55::9"


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


class VethPair:
    def __init__(self, tag="u"):
        base = "sv3%s%d" % (tag, os.getpid())
        self.sw, self.peer = base + "sw", base + "pe"
        self.sw_if, self.peer_if = "up0", "pe0"
        self.procs = []

    def __enter__(self):
        ip("netns", "add", self.sw)
        ip("netns", "add", self.peer)
        self.plug()
        for ns in (self.sw, self.peer):
            ip("-n", ns, "link", "set", "lo", "up")
        return self

    def plug(self):
        """(Re)create the veth pair and bring both ends up."""
        ip("-n", self.sw, "link", "add", self.sw_if, "type", "veth", "peer", "name", self.peer_if,
           "netns", self.peer)
        ip("-n", self.peer, "addr", "add", PEER_IP + "/24", "dev", self.peer_if)
        ip("-n", self.peer, "addr", "add", PEER_IP6 + "/64", "dev", self.peer_if, "nodad")
        self.set_link(self.sw, self.sw_if, True)
        self.set_link(self.peer, self.peer_if, True)

    def unplug(self):
        ip("-n", self.sw, "link", "del", self.sw_if)

    def set_link(self, ns, ifname, up):
        ip("-n", ns, "link", "set", ifname, "up" if up else "down")

    def mac(self, ns, ifname):
        out = ip("-n", ns, "-o", "link", "show", ifname).stdout
        return out.split("link/ether ")[1].split()[0]

    def counters(self, ns, ifname):
        out = ip("-n", ns, "-s", "-j", "link", "show", ifname).stdout
        st = json.loads(out)[0]["stats64"]
        return st["rx"]["packets"], st["tx"]["packets"]

    def exec_cmd(self, ns, *cmd):
        return ["ip", "netns", "exec", ns, *cmd]

    def popen(self, ns, *cmd, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        p = subprocess.Popen(self.exec_cmd(ns, *cmd), text=True, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, ns, *cmd, timeout=60):
        return subprocess.run(self.exec_cmd(ns, *cmd), capture_output=True, text=True, timeout=timeout)

    def __exit__(self, *exc):
        for p in self.procs:
            stop_session(p, signal.SIGINT)
        for ns in (self.sw, self.peer):
            ip("netns", "del", ns, check=False)

