"""Uplinks: the ports that connect the switch to a network rather than to
a guest (`--uplink KIND:TARGET`).  This module parses the option; the
kinds live beside it (afpacket.py) and run in sv3/nic_worker.py."""
import re

KINDS = ("af_packet", "vfio")
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


class Uplink:
    def __init__(self, kind, target):
        self.kind, self.target = kind, target

    def __str__(self):
        return "%s:%s" % (self.kind, self.target)


def parse(spec):
    """'af_packet:eth1' or 'vfio:0000:05:00.0' -> Uplink; ValueError with a
    message fit for the user otherwise."""
    kind, sep, target = spec.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError("%r: expected af_packet:INTERFACE or vfio:PCI-ADDRESS" % spec)
    if kind == "af_packet" and not (0 < len(target) < 16 and "/" not in target and " " not in target):
        raise ValueError("%r: not an interface name" % spec)
    if kind == "vfio" and not PCI_ADDRESS.match(target.lower()):
        raise ValueError("%r: not a PCI address like 0000:05:00.0" % spec)
    return Uplink(kind, target.lower() if kind == "vfio" else target)
