"""Passing shared-memory segments to other nodes on the same host, as file descriptors.

A node sends a tensor to a node on its host as a *handle*: the message carries (dtype, shape,
offset) and a token, and the segment's file descriptor goes ahead of it over a Unix datagram
socket (``SCM_RIGHTS``) bound in the abstract namespace, so no file is ever created. The
kernel keeps a descriptor in flight alive even if its sender dies right after sending, and
closes it if the receiver dies first: the sender's death cannot free a tensor a live receiver
is about to read, and nothing leaks either way. The receiver maps each segment read-only as
the descriptors arrive.

Only authenticated peers may pass descriptors: the socket asks the kernel for each sender's
credentials (``SO_PASSCRED``), and datagrams from a process that is not a connected node of
this host, of this user, are dropped (their descriptors closed) and logged.

Same-host detection happens at the node handshake: both sides tell each other `host_info`
(boot id, network namespace, user, pid, socket address); equal boot ids, namespaces and users
mean one host.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
from typing import Any

from ._memory import Segment, map_segment

__all__ = ["FdChannel", "host_info", "same_host"]

log = logging.getLogger("numbeam")

_SEQ = struct.Struct("!Q")
_UCRED = struct.Struct("iII")  # pid, uid, gid
MAX_FDS = 250  # below the kernel's SCM_MAX_FD (253)
_ANC = socket.CMSG_SPACE(MAX_FDS * 4) + socket.CMSG_SPACE(_UCRED.size)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _netns() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


class FdChannel:
    """This node's socket for passing segment descriptors to and from nodes on the host."""

    def __init__(self) -> None:
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.address = b"\0numbeam-" + os.urandom(12).hex().encode()
            sock.bind(self.address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.seq = 0
        self.allowed: dict[bytes, int] = {}  # socket address -> pid of a node on this host
        self.pending: dict[tuple[bytes, int], list[int]] = {}  # (sender address, seq) -> fds

    def info(self) -> list[Any]:
        return host_info(self.address)

    def send(self, address: bytes, fds: list[int]) -> int:
        """Pass ``fds`` to the node at ``address``; the token its message must name.

        Raises OSError if they cannot go now (the receiver is gone, or its queue is full).
        """
        self.seq += 1
        # (socket.send_fds ignores its address argument before Python 3.13)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        self.sock.sendmsg([_SEQ.pack(self.seq)], anc, 0, address)
        return self.seq

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Take every datagram waiting; keep the descriptors of allowed senders by token."""
        recvmsg = self.sock.recvmsg
        while True:
            try:
                data, anc, flags, sender = recvmsg(_SEQ.size, _ANC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("numbeam: descriptor socket: %s", e)
                return
            fds: list[int] = []
            cred: tuple[int, int, int] | None = None
            for level, kind, payload in anc:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
                elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    cred = _UCRED.unpack_from(payload)
            why = None
            if (
                cred is None
                or cred[1] != os.getuid()
                or type(sender) is not bytes
                or self.allowed.get(sender) != cred[0]
            ):
                why = f"from a process that is not a node of this host (credentials {cred})"
            elif flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(data) != _SEQ.size:
                why = "malformed"
            if why is not None:
                log.warning("numbeam: dropped a descriptor datagram %s", why)
                _close_all(fds)
                continue
            key = (sender, _SEQ.unpack(data)[0])
            old = self.pending.pop(key, None)
            if old is not None:
                _close_all(old)
            self.pending[key] = fds

    def claim(self, sender: bytes, seq: Any) -> list[Segment] | None:
        """The segments passed with message ``seq`` by the node at ``sender``, mapped."""
        key = (sender, seq)
        fds = self.pending.pop(key, None)
        if fds is None:
            self.drain()  # sent before the message, so it is in the socket's queue by now
            fds = self.pending.pop(key, None)
            if fds is None:
                return None
        # Datagrams arrive in the order their messages do: older unclaimed ones were for
        # messages that never came (their batch was dropped), so close them.
        if type(seq) is int:
            for k in [k for k in self.pending if k[0] == sender and k[1] < seq]:
                _close_all(self.pending.pop(k))
        out = []
        for i, fd in enumerate(fds):
            try:
                out.append(map_segment(fd))
            except (OSError, ValueError) as e:
                _close_all(fds[i + 1 :])
                log.warning("numbeam: could not map a segment from %r: %s", sender, e)
                return None
        return out

    def forget(self, sender: bytes) -> None:
        """A node went away: drop what it passed that no message claimed."""
        self.allowed.pop(sender, None)
        for k in [k for k in self.pending if k[0] == sender]:
            _close_all(self.pending.pop(k))

    def close(self) -> None:
        for fds in self.pending.values():
            _close_all(fds)
        self.pending.clear()
        self.sock.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def host_info(address: bytes) -> list[Any]:
    """What a node tells a peer at the handshake so the peer can tell if they share a host."""
    return [_boot_id(), _netns(), os.getuid(), os.getpid(), address]


def same_host(mine: list[Any], theirs: Any) -> tuple[int, bytes] | None:
    """``(pid, socket address)`` of a peer on this host, from its `host_info`; else None."""
    if type(theirs) is not list or len(theirs) != 5:
        return None
    boot, netns, uid, pid, address = theirs
    if (
        type(boot) is not str
        or not boot
        or type(pid) is not int
        or type(address) is not bytes
        or not address.startswith(b"\0numbeam-")
    ):
        return None
    if boot != mine[0] or netns != mine[1] or uid != mine[2]:
        return None
    return pid, address
