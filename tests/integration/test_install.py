"""`pip install .` into a fresh virtualenv gives a working switch: the C
core is compiled at install time and `python -m sv3.master` serves a port."""
import os
import signal
import subprocess
import time
import venv

from tests.helpers.switch import ROOT
from tests.helpers.vhost_client import VhostClient


def test_pip_install_into_fresh_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    # A copy of the tree, so no build output of the work tree can leak in.
    src = tmp_path / "src"
    files = subprocess.run(["git", "-C", ROOT, "ls-files"], check=True, capture_output=True,
                           text=True).stdout.split()
    for f in files:
        dst = src / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(os.path.join(ROOT, f)):
            dst.write_bytes(open(os.path.join(ROOT, f), "rb").read())
    out = subprocess.run([py, "-m", "pip", "install", "-q", str(src)], capture_output=True,
                         text=True, timeout=600, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    sock = str(tmp_path / "sv3")
    master = subprocess.Popen([py, "-m", "sv3.master", "--socket", sock], cwd=str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock + ".ctl"):
            assert master.poll() is None and time.monotonic() < deadline, master.stdout.read()
            time.sleep(0.1)
        c = VhostClient(sock)
        assert c.get_features() & (1 << 32)
        c.close()
        ctl = subprocess.run([py, "-m", "sv3.ctl", "--socket", sock, "ports"], capture_output=True,
                             text=True, timeout=20, cwd=str(tmp_path))
        assert ctl.returncode == 0 and ctl.stdout.startswith("PORT"), ctl.stderr
    finally:
        master.send_signal(signal.SIGTERM)
        assert master.wait(15) == 0
    assert not os.path.exists(sock)
