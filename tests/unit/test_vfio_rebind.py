"""scripts/vfio-rebind against a fake sysfs tree: an 82599 with two
functions in one IOMMU group behind a bridge.  A small fake kernel thread
plays the PCI core's part: a write to drivers_probe binds the device to
its driver_override, or else to its native driver.  No real device is
touched."""
import os
import pwd
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.switch import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "vfio-rebind")
NIC = ("0000:05:00.0", "0000:05:00.1")
BRIDGE = "0000:00:01.0"


class FakeSysfs:
    def __init__(self, root, nets=None):
        self.sys, self.dev = os.path.join(root, "sys"), os.path.join(root, "dev")
        self.pci = os.path.join(self.sys, "bus", "pci")
        for drv in ("ixgbe", "pcieport", "vfio-pci"):
            os.makedirs(os.path.join(self.pci, "drivers", drv))
            open(os.path.join(self.pci, "drivers", drv, "unbind"), "w").close()
        open(os.path.join(self.pci, "drivers_probe"), "w").close()
        group = os.path.join(self.sys, "kernel", "iommu_groups", "17", "devices")
        os.makedirs(group)
        os.makedirs(os.path.join(self.dev, "vfio"))
        open(os.path.join(self.dev, "vfio", "17"), "w").close()
        for addr, cls, drv in ((NIC[0], "0x020000", "ixgbe"), (NIC[1], "0x020000", "ixgbe"),
                               (BRIDGE, "0x060400", "pcieport")):
            d = os.path.join(self.pci, "devices", addr)
            os.makedirs(d)
            for name, text in (("class", cls), ("vendor", "0x8086"), ("device", "0x10fb"),
                               ("driver_override", "(null)")):
                with open(os.path.join(d, name), "w") as f:
                    f.write(text + "\n")
            os.symlink(os.path.join(self.pci, "drivers", drv), os.path.join(d, "driver"))
            os.symlink(os.path.dirname(group), os.path.join(d, "iommu_group"))
            os.symlink(d, os.path.join(group, addr))
            for iface in (nets or {}).get(addr, []):
                os.makedirs(os.path.join(d, "net", iface))
        self.native = {NIC[0]: "ixgbe", NIC[1]: "ixgbe", BRIDGE: "pcieport"}
        self.stop = threading.Event()
        self.kernel = threading.Thread(target=self._kernel, daemon=True)
        self.kernel.start()

    def read(self, *path):
        with open(os.path.join(self.pci, *path)) as f:
            return f.read().strip()

    def driver(self, addr):
        link = os.path.join(self.pci, "devices", addr, "driver")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def _kernel(self):
        """unbind removes the driver link; drivers_probe binds again."""
        while not self.stop.is_set():
            for drv in os.listdir(os.path.join(self.pci, "drivers")):
                unbind = os.path.join(self.pci, "drivers", drv, "unbind")
                addr = open(unbind).read().strip()
                if addr:
                    os.unlink(os.path.join(self.pci, "devices", addr, "driver"))
                    open(unbind, "w").close()
            probe = os.path.join(self.pci, "drivers_probe")
            addr = open(probe).read().strip()
            if addr and self.driver(addr) is None:
                override = self.read("devices", addr, "driver_override")
                drv = override if override and override != "(null)" else self.native[addr]
                os.symlink(os.path.join(self.pci, "drivers", drv),
                           os.path.join(self.pci, "devices", addr, "driver"))
                open(probe, "w").close()
            time.sleep(0.01)


@pytest.fixture
def fake(tmp_path):
    trees = []

    def make(nets=None):
        trees.append(FakeSysfs(str(tmp_path), nets))
        return trees[-1]
    yield make
    for t in trees:
        t.stop.set()
        t.kernel.join()


def rebind(fs, *args):
    return subprocess.run([sys.executable, SCRIPT, "--sysfs", fs.sys, "--dev", fs.dev, *args],
                          capture_output=True, text=True, timeout=30)


def test_dry_run_lists_the_group_and_changes_nothing(fake):
    fs = fake()
    r = rebind(fs, "--dry-run", "05:00.0")
    assert r.returncode == 0, r.stderr
    assert "IOMMU group 17" in r.stdout and "dry run" in r.stdout
    assert f"{NIC[1]} [8086:10fb] ixgbe: -> vfio-pci (same group: must follow)" in r.stdout
    assert f"{BRIDGE} [8086:10fb] pcieport: bridge, stays" in r.stdout
    assert [fs.driver(a) for a in NIC] == ["ixgbe", "ixgbe"]
    assert fs.read("devices", NIC[0], "driver_override") == "(null)"


def test_binds_the_whole_group_and_gives_the_group_to_a_user(fake):
    fs = fake()
    r = rebind(fs, NIC[0], "nobody")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [fs.driver(a) for a in NIC] == ["vfio-pci", "vfio-pci"]
    assert fs.driver(BRIDGE) == "pcieport"
    assert [fs.read("devices", a, "driver_override") for a in NIC] == ["vfio-pci"] * 2
    st = os.stat(os.path.join(fs.dev, "vfio", "17"))
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid and st.st_mode & 0o777 == 0o660


def test_back_returns_the_group_to_its_kernel_driver(fake):
    fs = fake()
    assert rebind(fs, NIC[0]).returncode == 0
    r = rebind(fs, "--back", NIC[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert [fs.driver(a) for a in NIC] == ["ixgbe", "ixgbe"]
    assert [fs.read("devices", a, "driver_override") for a in NIC] == ["", ""]
    assert rebind(fs, NIC[0]).returncode == 0
    r = rebind(fs, "--back", "--driver", "pcieport", NIC[0])   # a named driver, then no override
    assert r.returncode == 0, r.stdout + r.stderr
    assert [fs.driver(a) for a in NIC] == ["pcieport", "pcieport"]
    assert [fs.read("devices", a, "driver_override") for a in NIC] == ["", ""]


def test_refuses_a_device_whose_interface_carries_an_address(fake):
    fs = fake(nets={NIC[1]: ["lo"]})          # lo always carries 127.0.0.1
    r = rebind(fs, NIC[0])
    assert r.returncode == 1
    assert "refusing" in r.stderr and "lo carries 127.0.0.1" in r.stderr and "--force" in r.stderr
    assert [fs.driver(a) for a in NIC] == ["ixgbe", "ixgbe"]
    r = rebind(fs, "--force", NIC[0])
    assert r.returncode == 0, r.stderr
    assert [fs.driver(a) for a in NIC] == ["vfio-pci", "vfio-pci"]


@pytest.mark.parametrize("args, code, words", [
    (["05:00"], 2, "not a PCI address"),
    (["0000:07:00.0"], 2, "no PCI device 0000:07:00.0"),
    ([NIC[0], "no-such-user-sv3"], 2, "no such user"),
    (["--back", NIC[0], "nobody"], 2, "USER only goes with binding"),
    (["--driver", "ixgbe", NIC[0]], 2, "--driver only goes with --back"),
])
def test_usage_errors_exit_2_with_a_reason(fake, args, code, words):
    fs = fake()
    r = rebind(fs, *args)
    assert r.returncode == code and words in r.stderr, r.stderr


def test_a_device_without_iommu_group_is_refused(fake):
    fs = fake()
    os.unlink(os.path.join(fs.pci, "devices", NIC[0], "iommu_group"))
    r = rebind(fs, NIC[0])
    assert r.returncode == 1 and "no IOMMU group" in r.stderr and "intel_iommu=on" in r.stderr
