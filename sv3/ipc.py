"""The master<->worker channel: one msgpack map per SOCK_SEQPACKET message,
optionally with file descriptors (SCM_RIGHTS).  Control path only: nothing
per frame ever crosses it.

master -> worker: snapshot {gen, fdb}, peer_add {port, out, in} + doorbell
fd, peer_del {port}, stop.  worker -> master: state {state, reason,
features}, learn {macs}."""
import os
import socket

import msgpack

MAX_MESSAGE = 1 << 20


class ChannelClosed(Exception):
    pass


def pair():
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock, obj, fds=()):
    data = msgpack.packb(obj, use_bin_type=True)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock):
    """-> (dict, fds), or (None, []) when nothing is waiting after all.
    Raises ChannelClosed on EOF or garbage."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4, socket.MSG_CMSG_CLOEXEC)
    except BlockingIOError:
        return None, []
    except ConnectionResetError:
        raise ChannelClosed("reset")
    if not data:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed("EOF")
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception:
        obj = None
    if not isinstance(obj, dict) or "t" not in obj:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed("malformed message")
    return obj, list(fds)
