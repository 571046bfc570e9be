"""The only place that builds POSIX shared-memory names.

Every segment of one switch instance starts with the instance prefix,
`sv3.<random hex>` by default, so two switches (and tests) can run side by
side and a stale segment is recognisable by its prefix.  Segments are
created by the master with mode 0600 and unlinked by the master."""
import secrets


def new_instance():
    return "sv3." + secrets.token_hex(6)


def ring(instance, src, dst):
    """The SPSC ring carrying frames from port src to port dst."""
    return "/%s.r%d-%d" % (instance, src, dst)


def port_block(instance, port_id):
    """The counters block of one port."""
    return "/%s.p%d" % (instance, port_id)
