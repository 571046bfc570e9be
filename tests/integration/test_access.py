"""Access to the switch: socket and shm modes, --group, refusing peers."""
import grp
import os
import stat
import subprocess
import sys
import time

import pytest

from tests.helpers.switch import ROOT, Switch

NOBODY = 65534


def connect_as(uid, gid, path):
    """Connect to path as another user; returns (connected, reply bytes)."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX);s.settimeout(3)\n"
            "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('refused-by-kernel', e.errno); sys.exit(0)\n"
            "s.sendall(bytes([1,0,0,0,1,0,0,0,0,0,0,0]))\n"
            "try:\n d=s.recv(20)\nexcept OSError:\n d=b''\n"
            "print('connected', len(d))\n")
    # Debian's own python3: the test runner's may live where nobody can read.
    out = subprocess.run(["/usr/bin/python3", "-c", code, path], capture_output=True, text=True,
                         timeout=20, preexec_fn=lambda: (os.setgroups([]), os.setgid(gid), os.setuid(uid)))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_socket_and_segments_are_private(switch):
    for path in (switch.socket, switch.socket + ".ctl"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    from tests.helpers.vhost_client import VhostClient
    c = VhostClient(switch.socket)
    c.get_features()
    switch.wait_ports(lambda ps: len(ps) == 1, 10)
    segs = switch.shm_segments()
    assert segs and all(stat.S_IMODE(os.stat("/dev/shm/" + n).st_mode) == 0o600 for n in segs)
    assert len(switch.instance) >= len("sv3.") + 12          # 48 random bits per instance
    c.close()


def test_other_users_cannot_connect(switch):
    os.chmod(os.path.dirname(switch.socket), 0o755)
    assert connect_as(NOBODY, NOBODY, switch.socket)[0] == "refused-by-kernel"


def test_a_peer_outside_the_policy_is_refused_and_logged(switch):
    os.chmod(os.path.dirname(switch.socket), 0o755)
    os.chmod(switch.socket, 0o666)                 # someone loosened the socket
    result = connect_as(NOBODY, NOBODY, switch.socket)
    assert result == ["connected", "0"]            # accepted by the kernel, closed by sv3
    assert "refused a connection from pid" in switch.log()
    assert switch.ports() == []


@pytest.fixture
def group():
    name = "sv3test%d" % os.getpid()
    subprocess.run(["groupadd", "--system", name], check=True)
    yield name
    subprocess.run(["groupdel", name], check=True)


def test_group_members_may_attach(group):
    sw = Switch("--group", group).start()
    try:
        gid = grp.getgrnam(group).gr_gid
        os.chmod(sw.dir, 0o755)
        assert os.stat(sw.socket).st_gid == gid
        result = connect_as(NOBODY, gid, sw.socket)
        assert result == ["connected", "20"]       # GET_FEATURES answered
        deadline = time.monotonic() + 5
        while "port 1 attached" not in sw.log():
            assert time.monotonic() < deadline, sw.log()
            time.sleep(0.1)
        assert "refused" not in sw.log()
    finally:
        sw.stop()


def test_unknown_group_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "sv3.master", "--group", "no-such-group-sv3"],
                         capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert out.returncode == 2 and "no such group" in out.stderr
