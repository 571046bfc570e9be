"""One vhost-user message in or out over the AF_UNIX stream socket, with
file descriptors as SCM_RIGHTS.  Framing errors raise ProtocolError: the
stream is then unusable and the caller closes the connection."""
import os
import socket

from . import protocol as P


class ConnectionClosed(Exception):
    """The front-end closed the socket (cleanly or mid-message)."""


class ProtocolError(Exception):
    """The byte stream cannot be trusted any more."""


class Message:
    __slots__ = ("request", "flags", "payload", "fds")

    def __init__(self, request, flags, payload, fds):
        self.request, self.flags, self.payload, self.fds = request, flags, payload, fds

    @property
    def need_reply(self):
        return bool(self.flags & P.FLAG_NEED_REPLY)

    @property
    def name(self):
        return P.request_name(self.request)

    def close_fds(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def _recv_exact(sock, n):
    chunks = []
    while n:
        try:
            data = sock.recv(n)
        except TimeoutError:
            raise ProtocolError("front-end stalled in the middle of a message")
        except ConnectionResetError:
            raise ConnectionClosed("connection reset inside a message")
        if not data:
            raise ConnectionClosed("EOF inside a message")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def recv_message(sock):
    """Read one message; the caller owns (and must close) msg.fds."""
    try:
        data, fds, msg_flags, _ = socket.recv_fds(sock, P.HEADER.size, P.MAX_FDS,
                                                   socket.MSG_CMSG_CLOEXEC)
    except ConnectionResetError:
        raise ConnectionClosed("connection reset")
    except TimeoutError:
        raise ProtocolError("no message header within the timeout")
    if not data:
        for fd in fds:
            os.close(fd)
        raise ConnectionClosed("EOF")
    msg = Message(0, 0, b"", list(fds))
    try:
        if msg_flags & socket.MSG_CTRUNC:
            raise ProtocolError("file descriptors were truncated (MSG_CTRUNC)")
        if len(data) < P.HEADER.size:
            data += _recv_exact(sock, P.HEADER.size - len(data))
        msg.request, msg.flags, size = P.HEADER.unpack(data)
        if msg.flags & 0x3 != P.VERSION:
            raise ProtocolError("bad version bits in flags 0x%x" % msg.flags)
        if size > P.MAX_PAYLOAD:
            raise ProtocolError("payload of %d bytes for %s" % (size, msg.name))
        msg.payload = _recv_exact(sock, size) if size else b""
    except BaseException:
        msg.close_fds()
        raise
    return msg


def send_reply(sock, request, payload):
    """Replies carry flags exactly VERSION|REPLY and no fds."""
    data = P.HEADER.pack(request, P.VERSION | P.FLAG_REPLY, len(payload)) + payload
    try:
        sock.sendall(data, socket.MSG_NOSIGNAL)
    except TimeoutError:
        raise ProtocolError("front-end does not read its replies")
    except OSError as e:
        raise ConnectionClosed("front-end left before reading the reply (%s)" % e.strerror)
