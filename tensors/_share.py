"""Passing shared-memory segments to other nodes on the same host, as file descriptors.

A node sends a tensor to a node on its host as a *handle*: the message carries (dtype, shape,
offset) and a token, and the segment's file descriptor goes ahead of its batch over a Unix
datagram socket (``SCM_RIGHTS``) bound in the abstract namespace, so no file is ever created. The
kernel keeps a descriptor in flight alive even if its sender dies right after sending, and
closes it if the receiver dies first: the sender's death cannot free a tensor a live receiver
is about to read, and nothing leaks either way. The receiver maps each segment read-only as
the descriptors arrive.

Only authenticated peers may pass descriptors: the socket asks the kernel for each sender's
credentials (``SO_PASSCRED``), and datagrams from a process that is not a connected node of
this host (by pid, learnt at the handshake), of this user, are dropped (their descriptors
closed) and logged.

Same-host detection happens at the node handshake: both sides tell each other `host_info`
(boot id, network namespace, user, pid, socket address); equal boot ids, namespaces and users
mean one host.
"""

from __future__ import annotations

import array
import logging
import os
import resource
import socket
import stat
import struct
from typing import Any

from ._memory import Segment, map_segment

__all__ = ["PASSES_DEVICE_FDS", "FdChannel", "PassedFd", "host_info", "same_host"]

# `claim` hands back a descriptor that is not a shared-memory file (a CUDA memory pool's)
# unmapped, as a `PassedFd`: numbeam.gpu's CUDA pool path relies on it.
PASSES_DEVICE_FDS = True

log = logging.getLogger("numbeam")

_TOKEN = struct.Struct("!Q")
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


def _raise_fd_limit() -> None:
    """Every segment mapped here keeps a descriptor open: allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


class PassedFd:
    """A passed descriptor that is not a shared-memory segment (a CUDA memory pool's), handed
    back unmapped; closed when the last reference to it goes (after its batch is decoded)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __repr__(self) -> str:
        return f"<numbeam passed descriptor {self.fd}>"

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _mapped(fd: int) -> Segment | PassedFd:
    """A shared-memory segment mapped from ``fd``; any other descriptor unmapped. Takes ``fd``."""
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode) or st.st_size <= 0:
        return PassedFd(fd)
    return map_segment(fd)


def _dgram_socket() -> socket.socket:
    return socket.socket(
        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )


class FdChannel:
    """This node's sockets for passing segment descriptors to and from nodes on the host.

    One socket, bound at `address`, receives; one connected socket per peer sends, so that a
    full receiver (the kernel queues only ``net.unix.max_dgram_qlen`` datagrams, 10 by default)
    is back-pressure the sender can wait on (`sender` is writable again when it has room).
    Descriptors travel one datagram per batch of messages, tagged with a token that the
    batch's tensor handles name; tokens grow, so a receiver knows the older unclaimed ones
    belonged to batches that never came.
    """

    def __init__(self) -> None:
        _raise_fd_limit()
        sock = _dgram_socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.address = b"\0numbeam-" + os.urandom(12).hex().encode()
            sock.bind(self.address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.token = 0
        self.senders: dict[bytes, socket.socket] = {}  # peer address -> connected socket
        self.allowed: set[int] = set()  # pids of the nodes on this host we are connected to
        self.pending: dict[tuple[int, int], list[int]] = {}  # (sender pid, token) -> fds

    def info(self) -> list[Any]:
        return host_info(self.address)

    def next_token(self) -> int:
        self.token += 1
        return self.token

    def sender(self, address: bytes) -> socket.socket:
        """The socket that sends to the node at ``address`` (connected on first use)."""
        sock = self.senders.get(address)
        if sock is None:
            sock = _dgram_socket()
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
            self.senders[address] = sock
        return sock

    def send(self, address: bytes, token: int, fds: list[int]) -> None:
        """Pass ``fds`` under ``token`` to the node at ``address``.

        Raises BlockingIOError when its queue is full (wait until `sender` is writable), or
        another OSError when it is gone.
        """
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        self.sender(address).sendmsg([_TOKEN.pack(token)], anc)

    def drop_sender(self, address: bytes) -> None:
        sock = self.senders.pop(address, None)
        if sock is not None:
            sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Take every datagram waiting; keep the descriptors of allowed senders by token."""
        recvmsg = self.sock.recvmsg
        while True:
            try:
                # (close-on-exec: a subprocess of this node must not hold our segments)
                data, anc, flags, _ = recvmsg(_TOKEN.size, _ANC, socket.MSG_CMSG_CLOEXEC)
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
            if cred is None or cred[1] != os.getuid() or cred[0] not in self.allowed:
                why = f"from a process that is not a node of this host (credentials {cred})"
            elif flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(data) != _TOKEN.size:
                why = "malformed"
            if why is not None:
                log.warning("numbeam: dropped a descriptor datagram %s", why)
                _close_all(fds)
                continue
            assert cred is not None
            key = (cred[0], _TOKEN.unpack(data)[0])
            old = self.pending.pop(key, None)
            if old is not None:
                _close_all(old)
            self.pending[key] = fds

    def claim(self, pid: int, token: Any) -> list[Segment | PassedFd] | None:
        """What the node with OS pid ``pid`` passed under ``token``: its shared-memory
        segments mapped, any other descriptor (a CUDA pool's) as a `PassedFd`."""
        key = (pid, token)
        fds = self.pending.pop(key, None)
        if fds is None:
            self.drain()  # sent before the batch, so it is in the socket's queue by now
            fds = self.pending.pop(key, None)
            if fds is None:
                return None
        if type(token) is int:
            for k in [k for k in self.pending if k[0] == pid and k[1] < token]:
                _close_all(self.pending.pop(k))
        out = []
        for i, fd in enumerate(fds):
            try:
                out.append(_mapped(fd))
            except (OSError, ValueError) as e:
                _close_all(fds[i + 1 :])
                log.warning("numbeam: could not map a segment from pid %d: %s", pid, e)
                return None
        return out

    def forget(self, pid: int) -> None:
        """A node went away: drop what it passed that no batch claimed."""
        self.allowed.discard(pid)
        for k in [k for k in self.pending if k[0] == pid]:
            _close_all(self.pending.pop(k))

    def close(self) -> None:
        for fds in self.pending.values():
            _close_all(fds)
        self.pending.clear()
        for sock in self.senders.values():
            sock.close()
        self.senders.clear()
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
