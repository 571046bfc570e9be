"""--uplink parsing (sv3/uplink/__init__.py) and the master's checks."""
import pytest

from sv3 import master, uplink


@pytest.mark.parametrize("spec,kind,target", [
    ("af_packet:eth1", "af_packet", "eth1"),
    ("af_packet:veth-sv3.0", "af_packet", "veth-sv3.0"),
    ("vfio:0000:05:00.0", "vfio", "0000:05:00.0"),
    ("vfio:0000:AF:00.1", "vfio", "0000:af:00.1"),
])
def test_valid_specs(spec, kind, target):
    up = uplink.parse(spec)
    assert (up.kind, up.target) == (kind, target) and str(up) == "%s:%s" % (kind, target)


@pytest.mark.parametrize("spec", [
    "eth1", "tap:eth1", "af_packet:", "af_packet:a/b", "af_packet:" + "x" * 16,
    "vfio:05:00.0", "vfio:0000:05:00.8", "vfio:eth1",
])
def test_bad_specs_are_refused_with_a_reason(spec):
    with pytest.raises(ValueError, match="expected|not an interface|not a PCI address"):
        uplink.parse(spec)


def test_master_refuses_a_missing_interface_and_duplicates(capsys):
    with pytest.raises(SystemExit):
        master.parse_args(["--uplink", "af_packet:sv3nosuchif0"])
    assert "no interface sv3nosuchif0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        master.parse_args(["--uplink", "af_packet:lo", "--uplink", "af_packet:lo"])
    assert "given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        master.parse_args(["--uplink", "bogus"])
    assert "expected af_packet:INTERFACE or vfio:PCI-ADDRESS" in capsys.readouterr().err
    assert [str(u) for u in master.parse_args(["--uplink", "af_packet:lo"]).uplink] == ["af_packet:lo"]
