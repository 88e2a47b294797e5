"""What the parts of `Distribution` share: the records of peers, their batches and incoming
connections, and `State`, the attributes and methods each part relies on.

`Distribution` (`_node`) is made of `Handshake` (`_handshake`), `Outgoing` (`_outgoing`) and
`Dispatch` (`_dispatch`), each a mixin over `State`; `Distribution.__init__` sets every
attribute `State` declares.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
from numbeam.actors._types import Pid, Ref
from numbeam.tensors._share import FdChannel

from ._gate import RejectLog
from ._names import NodeAddress
from ._ops import _CONNECTING
from ._wire import Decoder, Encoder

if TYPE_CHECKING:
    from numbeam.actors._options import NodeOptions
    from numbeam.actors._runtime import Process, Runtime


class _Batch:
    __slots__ = ("fd_at", "fds", "frames", "parts", "segments", "size", "token")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.frames: list[Any] = []
        self.size = 0
        # For a peer on this host: the descriptors of the segments its tensor handles name,
        # passed ahead of the batch under `token` (see numbeam.tensors._share).
        self.token: int | None = None
        self.fds: list[int] = []
        self.fd_at: dict[int, int] = {}
        self.segments: list[Any] = []  # keeps those descriptors open until they are passed


class Peer:
    """Our outgoing channel to one node, and what we know of that node."""

    __slots__ = (
        "addr",
        "batch",
        "bye_waiter",
        "creation",
        "deferred",
        "dirty",
        "fd_address",
        "handle",
        "handshake_out",
        "mon",
        "name",
        "next_spawn",
        "nonce",
        "sealed",
        "slot",
        "sock",
        "state",
        "timer",
        "unsent",
        "unsent_shared",
        "waiters",
    )

    def __init__(self, addr: NodeAddress) -> None:
        self.addr = addr
        self.name = addr.name
        self.state = _CONNECTING
        self.sock: zmq.Socket[Any] | None = None
        self.handle = 0  # libzmq's address of sock, for _zmqfast
        self.mon: zmq.Socket[Any] | None = None
        self.creation: int | None = None
        self.slot = random.getrandbits(22) + 1
        self.next_spawn = itertools.count(1)
        self.nonce = b""
        self.handshake_out: list[bytes] | None = None  # a handshake step waiting to be sent
        self.batch = _Batch()
        self.sealed: deque[_Batch] = deque()
        self.dirty = False
        self.waiters: list[asyncio.Future[bool]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.bye_waiter: asyncio.Future[None] | None = None
        # The peer's descriptor socket, when it is on this host: tensors go as handles.
        self.fd_address: bytes | None = None
        # What was sent before the handshake (None once up), and whether a tensor in shared
        # memory went as bytes in it: if the peer is on this host, it is encoded again, with
        # handles (see Outgoing._reencode).
        self.unsent: list[list[Any]] | None = []
        self.unsent_shared = False
        # A node that is starting (a device worker): what is sent to it waits, and the
        # connection is opened only when `Distribution.release` says it listens.
        self.deferred = False


class _Incoming:
    """A connection some node opened to our ROUTER (its identity, once authenticated)."""

    __slots__ = ("authed", "claim", "creation", "fd_pid", "name", "nonce", "slot")

    def __init__(self, name: str, creation: int, slot: int, nonce: bytes) -> None:
        self.name = name
        self.creation = creation
        self.slot = slot
        self.nonce = nonce
        self.authed = False
        # When the node is on this host: its OS pid, and how its tensor handles find their
        # segments.
        self.fd_pid: int | None = None
        self.claim: Callable[[int], Any] | None = None


class State:
    """The state of one node's distribution layer, as its parts see it (set by
    `Distribution.__init__` and `Distribution.start`), and the methods one part calls in
    another."""

    rt: Runtime
    opts: NodeOptions
    addr: NodeAddress
    name: str  # the node's real name, once `start` has bound its socket
    creation: int
    cookie: bytes
    is_hidden: bool
    hidden: set[str]
    curve: tuple[bytes, bytes] | None
    peers: dict[str, Peer]
    incoming: dict[bytes, _Incoming]
    slots: dict[int, str]
    slot_seen: dict[int, int]
    used_slots: set[int]
    pre_granted: dict[int, str]
    pending_spawn: dict[int, list[tuple[str, list[Any]]]]
    node_monitors: dict[str, list[Pid]]
    handlers: dict[int, Callable[[str, list[Any]], None]]
    node_up_hooks: list[Callable[[str], None]]
    node_down_hooks: list[Callable[[str], None]]
    encoder: Encoder
    decoder: Decoder
    fdchan: FdChannel | None
    host: list[Any] | None
    loop: asyncio.AbstractEventLoop
    router: zmq.Socket[Any]
    router_handle: int
    router_mon: zmq.Socket[Any] | None
    _dirty: list[Peer]
    _flush_scheduled: bool
    _closing: bool
    rejects: RejectLog
    zap_domain: bytes
    held: dict[str, int]

    if TYPE_CHECKING:
        # Distribution (_node)
        def nodes(self) -> list[str]: ...
        def exit_signal(self, sender: Pid, target: Pid, reason: Any, from_link: bool) -> None: ...
        def down(self, watcher: Pid, ref: Ref, target: Any, reason: Any) -> None: ...
        def _peer(self, name: str) -> Peer | None: ...
        def _node_up(self, peer: Peer, their_nodes: Any) -> None: ...
        def _node_down(self, peer: Peer, reason: str, linger: bool = False) -> None: ...
        def _forget_incoming(self, ident: bytes, inc: _Incoming) -> None: ...
        def _meet(self, names: list[Any]) -> None: ...
        def _remote_spawn(self, src: str, item: list[Any]) -> None: ...

        # Handshake (_handshake)
        def _check_events(self, peer: Peer) -> None: ...
        def _on_handshake(
            self, ident: bytes, inc: _Incoming | None, magic: bytes, extra: list[Any]
        ) -> None: ...
        def _router_send(self, ident: bytes, msg: list[Any]) -> None: ...

        # Outgoing (_outgoing)
        def _enqueue(self, peer: Peer, item: list[Any]) -> None: ...
        def _mark_dirty(self, peer: Peer) -> None: ...
        def _flush_peer(self, peer: Peer) -> None: ...
        def _reencode(self, peer: Peer) -> None: ...

        # Dispatch (_dispatch)
        def _dispatch(self, src: str, item: list[Any]) -> None: ...
        def _local(
            self, src: str, item: list[Any], pid_id: Any, creation: Any
        ) -> Process | None: ...


__all__ = ["Peer", "State"]
