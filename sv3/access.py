"""Who may attach to the switch: socket permissions and the peer check.

The trust model (docs/failure-model.md): whoever can connect to the
switch socket can attach a port and hand the switch its memory, so the
socket is the boundary.  It is created mode 0660, owned by the switch's
user and, with --group, by that group.  Each accepted connection is then
checked by its SO_PEERCRED credentials: root, the switch's own user, and
members of --group are allowed; anyone else (the socket's mode was
loosened, say) is refused and logged.  Used by the master only."""
import grp
import os
import socket
import struct

SOCKET_MODE = 0o660


class Access:
    def __init__(self, group=None):
        self.group = group
        self.gid = grp.getgrnam(group).gr_gid if group else None
        self.uid = os.geteuid()

    def bind(self, path):
        """A listening socket at path with mode 0660 from its first moment."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        os.chmod(path, SOCKET_MODE)
        return s

    @staticmethod
    def peer(conn):
        """(pid, uid, gid) of the process at the other end."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)

    def allowed(self, pid, uid, gid):
        if uid in (0, self.uid):
            return True
        return self.gid is not None and (gid == self.gid or self.gid in _groups_of(pid))


def _groups_of(pid):
    """Supplementary groups of a live process (empty if it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()
