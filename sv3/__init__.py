"""sv3: a userspace Ethernet switch for QEMU guests over vhost-user.

Processes: sv3.master (accepts guests, owns the MAC table), one
sv3.port_worker per guest connection.  See docs/architecture.md."""
__version__ = "0.1.0"
