"""A minimal vhost-user front-end for tests: connects to the switch and
sends hand-made messages (no QEMU, no guest memory).  Enough to create
ports and probe the protocol; tests/fakes/frontend.Frontend builds the full
front-end (memory, vrings, handshake) on top of it."""
import socket
import struct

HEADER = struct.Struct("<III")
GET_FEATURES = 1


class VhostClient:
    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def send(self, request, payload=b"", flags=0x1, fds=(), size=None):
        """Any message: size overrides the header's size field."""
        data = HEADER.pack(request, flags, len(payload) if size is None else size) + payload
        self.send_bytes(data, fds)

    def send_bytes(self, data, fds=()):
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def recv_reply(self):
        head = self._recv_exact(HEADER.size)
        req, flags, size = HEADER.unpack(head)
        return req, flags, self._recv_exact(size)

    def request(self, request, payload=b""):
        self.send(request, payload)
        return self.recv_reply()

    def get_features(self):
        self.send(GET_FEATURES)
        req, flags, payload = self.recv_reply()
        assert (req, flags, len(payload)) == (GET_FEATURES, 0x5, 8)
        return struct.unpack("<Q", payload)[0]

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("switch closed the connection")
            buf += chunk
        return buf

    def close(self):
        self.sock.close()
