"""The only place that builds POSIX shared-memory names.

Every segment of one switch instance starts with the instance prefix
`sv3.<master pid>.<48 random bits>`, so two switches (and tests) can run
side by side, nobody can guess a name, and the segments of a master that
died without cleaning up (SIGKILL) are recognisable: stale_instances()
finds them for the next master to remove.  Segments are created by the
master with mode 0600 and unlinked by the master."""
import os
import re
import secrets

SHM_DIR = "/dev/shm"
_INSTANCE = re.compile(r"^(sv3\.(\d+)\.[0-9a-f]{12})\.")


def new_instance():
    return "sv3.%d.%s" % (os.getpid(), secrets.token_hex(6))


def stale_segments():
    """Segment names (with leading /) of instances whose master is dead."""
    stale = []
    for name in os.listdir(SHM_DIR):
        m = _INSTANCE.match(name)
        if m and not _alive(int(m.group(2))):
            stale.append("/" + name)
    return stale


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def ring(instance, src, dst):
    """The SPSC ring carrying frames from port src to port dst."""
    return "/%s.r%d-%d" % (instance, src, dst)


def port_block(instance, port_id):
    """The counters block of one port."""
    return "/%s.p%d" % (instance, port_id)
