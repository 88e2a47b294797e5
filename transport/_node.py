"""Distribution: the ZeroMQ links between nodes, the handshake, and remote process operations.

Each node binds one ROUTER socket at the address its name spells. To talk to a peer it
connects one DEALER to the peer's ROUTER, so a pair of nodes is joined by two one-way
channels, one per direction; simultaneous connects cannot clash, and everything one node sends
another travels one ordered channel, which keeps messages between a pair of processes in order.

Handshake (on the DEALER -> ROUTER connection, frames ``[MAGIC, msgpack]``), as Erlang's
distribution handshake but with HMAC-SHA256, so the cookie never crosses the wire:

1. client -> server ``["hello", client_name, creation, nonce_c, spawn_slot]``
2. server -> client ``["challenge", server_name, creation, nonce_s, sign(server, nonce_c)]``
3. client checks the server's proof, then ``["auth", sign(client, nonce_s)]``
4. server checks it: ``["welcome", its connected nodes]`` or ``["denied", why]``.

Then the client's data flows as ZeroMQ messages ``[batch, *buffers]``: ``batch`` is the
concatenation of msgpack-encoded operations (see `_wire`); large array bytes follow as their
own frames, sent with ``copy=False``. Operations are coalesced per peer until the end of the
event-loop iteration, so a burst of small messages costs one ZeroMQ send. A server that
authenticated a client connects back to it, and both tell each other the nodes they know:
connections are transitive, as in Erlang.

Failure detection is ZeroMQ's: ZMTP heartbeats (``HEARTBEAT_IVL`` / ``TIMEOUT`` / ``TTL``) on
every connection, and a socket monitor on each DEALER whose ``EVENT_DISCONNECTED`` means the
peer is gone. Then links to its processes fire with ``"noconnection"``, monitors deliver
``Down(..., "noconnection")`` and node monitors get `NodeDown`. A node that comes back is a new
incarnation (a new random ``creation``), so pids of the old one can never name a new process.

Remote spawn returns at once: the spawning node allocates the new pid itself, in a range of ids
(``slot << 40 | n``) that the target reserves for it at the handshake. Operations that another
node sends for such a pid before its spawn request has arrived are held until it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import itertools
import logging
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
import zmq
from numbeam.actors import _telemetry
from numbeam.actors._types import Down, NodeDown, Pid, Ref, RemoteError
from numbeam.gpu import _devices
from numbeam.tensors._share import FdChannel, same_host
from zmq.utils.monitor import parse_monitor_message

from . import _gate
from ._cookie import curve_keypair, new_nonce, resolve_cookie, sign, verify
from ._global import install as install_global_names
from ._names import NodeAddress, parse_node_name
from ._pg import install as install_process_groups
from ._wire import Decoder, Encoder, WireError

if TYPE_CHECKING:
    from numbeam.actors._runtime import Process, Runtime

log = logging.getLogger("numbeam.transport")

MAGIC = b"NBH1"
SLOT_SHIFT = 40  # ids >= 1 << 40 are allocated by the node that asked for the spawn
_LOCAL_IDS = (1 << SLOT_SHIFT) - 1
BATCH_BYTES = 16 * 1024  # a batch is sealed (sent as its own ZeroMQ message) beyond this
# Bounds on what a peer can make a node hold (see _gate for the connections themselves).
RCVHWM = 1000  # ZeroMQ messages queued per incoming connection; past it, the sender waits
HANDSHAKE_FRAME = 4096  # the largest frame taken from a connection before it authenticates
MAX_HELD = 10_000  # operations held per peer for pids whose remote spawn has not arrived

# Plain ints: zmq's constants are IntFlags, whose `&` costs more than the getsockopt itself.
_EVENTS, _RCVMORE = int(zmq.EVENTS), int(zmq.RCVMORE)
_POLLIN, _POLLOUT, _NOBLOCK = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.NOBLOCK)


def _load_zmqfast() -> Any:
    """The C extension for a node's hot ZeroMQ calls, bound to the libzmq pyzmq loaded; None
    where it was not built (no C compiler), cannot find that libzmq, or NUMBEAM_PURE_PYTHON is
    set: then pyzmq makes every call."""
    if os.environ.get("NUMBEAM_PURE_PYTHON"):
        return None
    try:
        from . import _zmqfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    # (zmq is imported above, so the libzmq it uses is loaded: find it among the mappings)
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libzmq" in line}
        for path in sorted(paths):
            try:
                _zmqfast.setup(path)
                return _zmqfast
            except OSError:
                continue
    except OSError:
        pass
    return None


_fast: Any = _load_zmqfast()
_NO_EXTRA: list[Any] = []  # (never appended to: a message's further frames get a new list)


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of `n` items: a batch is one array of operations."""
    if n < 16:
        return _HEADERS[n]
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


_HEADERS = [bytes((0x90 | n,)) for n in range(16)]  # arrays of up to 15 items


# Operations (the first element of each item in a batch).
OP_SEND, OP_SEND_NAME, OP_LINK, OP_UNLINK, OP_EXIT, OP_MONITOR, OP_DEMONITOR = range(7)
OP_DOWN, OP_SPAWN, OP_REPLY, OP_NODES, OP_BYE = range(7, 12)
OP_CAST_NAME = 12  # [op, name, request]: nb.cast to (name, node), delivered as a $gen_cast
OP_USER = 20  # first code for registered handlers (global names, process groups)
OP_CUDA_RELEASE = 40  # [op, payload]: an importer let go of CUDA buffers (numbeam.gpu._cuda)

_CONNECTING, _UP, _DOWN = 0, 1, 2

_context: zmq.Context[Any] | None = None


def _zmq_context() -> zmq.Context[Any]:
    # One context per OS process, never terminated: closing a socket with linger lets ZeroMQ
    # finish delivering in the background, which terminating the context would cut short.
    global _context
    if _context is None or _context.closed:
        _context = zmq.Context()
    return _context


_monitor_ids = itertools.count(1)


def _monitor_address() -> str:
    # pyzmq's default monitor address is made from the socket's FD number, which the OS
    # reuses: a new monitor could then connect to a dying one and never hear an event.
    return f"inproc://numbeam-monitor-{os.getpid()}-{next(_monitor_ids)}"


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
        # handles (see Distribution._reencode).
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


class Distribution:
    """The distribution layer of one runtime (``rt.dist``), present when ``node=`` is given,
    or when a local runtime drives devices (then `name` and `cookie` are private ones).

    A *hidden* node (a device worker, Erlang's ``-hidden``) meets no node it is told of; the
    names in `hidden` are nodes of ours that `nodes()` does not list and that are introduced
    to no other node.
    """

    def __init__(
        self,
        rt: Runtime,
        name: str | None = None,
        cookie: str | None = None,
        hidden: bool = False,
    ) -> None:
        opts = rt.options
        self.rt = rt
        self.opts = opts
        self.addr = parse_node_name(name or opts.node, for_bind=True)
        self.name = ""
        self.creation = int.from_bytes(os.urandom(4), "big") | 1
        self.cookie = resolve_cookie(cookie or opts.cookie, opts.cookie_file)
        self.is_hidden = hidden
        self.hidden: set[str] = set()
        self.curve = curve_keypair(self.cookie) if opts.curve else None
        self.peers: dict[str, Peer] = {}
        self.incoming: dict[bytes, _Incoming] = {}
        self.slots: dict[int, str] = {}  # spawn slot -> the node it was granted to
        self.slot_seen: dict[int, int] = {}  # spawn slot -> highest n spawned so far
        self.used_slots: set[int] = set()  # never granted twice in one incarnation
        self.pre_granted: dict[int, str] = {}  # slots granted before the node connects
        self.pending_spawn: dict[int, list[tuple[str, list[Any]]]] = {}
        self.node_monitors: dict[str, list[Pid]] = {}
        self.handlers: dict[int, Callable[[str, list[Any]], None]] = {}
        self.node_up_hooks: list[Callable[[str], None]] = []
        self.node_down_hooks: list[Callable[[str], None]] = []
        self.encoder = Encoder()
        self.decoder = Decoder(self._intern_pid)
        # Tensors cross to nodes on this host as handles to shared memory, unless disabled.
        self.fdchan: FdChannel | None = FdChannel() if opts.tensor_handles else None
        self.host: list[Any] | None = self.fdchan.info() if self.fdchan is not None else None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.router: zmq.Socket[Any] = None  # type: ignore[assignment]
        self.router_handle = 0
        self.router_mon: zmq.Socket[Any] | None = None
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        self._closing = False
        self.rejects = _gate.RejectLog(log, opts.node)  # rejected input, logged in aggregate
        self.zap_domain = b""
        self.held: dict[str, int] = {}  # peer -> how many of its operations pending_spawn holds
        install_global_names(rt, self)
        install_process_groups(rt, self)
        self._install_cuda_ledger()

    def _install_cuda_ledger(self) -> None:
        """CUDA memory shared by IPC handles: the kernel does not count importers, so an
        importer tells the owner when it lets go (OP_CUDA_RELEASE), and a node that goes
        down lets go of everything (see numbeam.gpu._cuda)."""
        self.register_handler(OP_CUDA_RELEASE, _on_cuda_release)
        self.node_down_hooks.append(_forget_cuda_node)
        if any(d.startswith("cuda:") for d in [*self.rt.devices, _devices.current()]):
            from numbeam.gpu import _cuda

            loop_send = self.send_op

            def send_release(node: str | None, payload: list[Any]) -> None:
                # (from a buffer's finalizer, in any thread: hand it to the loop)
                if node is not None and not self._closing:
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        self.loop.call_soon_threadsafe(loop_send, node, [OP_CUDA_RELEASE, payload])

            _cuda.set_release_sender(send_release)

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the ROUTER; sets the real node name (port 0 and ipc paths resolved)."""
        self.loop = asyncio.get_running_loop()
        ctx = _zmq_context()
        r = ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.RCVHWM, RCVHWM)
        r.setsockopt(zmq.MAXMSGSIZE, self.opts.max_message_size)
        r.setsockopt(zmq.HANDSHAKE_IVL, int(self.opts.connect_timeout * 1000))
        self._heartbeats(r)
        # Only peers that know the cookie get past ZeroMQ's own handshake (see _gate).
        self.zap_domain = _gate.register(ctx, self.cookie, self.rejects)
        r.setsockopt(zmq.ZAP_DOMAIN, self.zap_domain)
        if self.curve is not None:
            r.curve_server = True
            r.curve_secretkey = self.curve[1]
        else:
            r.plain_server = True
        global preset_listen_fd
        if preset_listen_fd is not None:
            # A device worker: its parent bound and listens on our ipc:// address already.
            r.setsockopt(zmq.USE_FD, preset_listen_fd)
            preset_listen_fd = None
        try:
            r.bind(self.addr.bind_endpoint(self.opts.listen))
        except zmq.ZMQError as e:
            r.close(0)
            _gate.unregister(ctx, self.zap_domain)
            raise OSError(f"node {self.opts.node!r}: cannot listen: {e}") from None
        endpoint = r.getsockopt_string(zmq.LAST_ENDPOINT)
        self.addr = self.addr.with_endpoint(endpoint)
        self.name = self.rejects.node = self.addr.name
        _gate.named(ctx, self.zap_domain, self.name)
        self.router = r
        self.router_handle = r.underlying  # libzmq's address of the socket, for _zmqfast
        self.router_mon = r.get_monitor_socket(
            zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            _monitor_address(),
        )
        self.rt._after_drain = self._after_drain
        self.loop.add_reader(r.FD, self._on_router)
        self.loop.add_reader(self.router_mon.FD, self._on_router_monitor)
        if self.fdchan is not None:
            self.loop.add_reader(self.fdchan.fileno(), self.fdchan.drain)
        # ZMQ_FD is edge-triggered: it only fires again once a socket has been drained, so
        # drain each one right after registering it.
        self._on_router_monitor()
        self._on_router()

    def _heartbeats(self, sock: zmq.Socket[Any]) -> None:
        ivl = int(self.opts.heartbeat_interval * 1000)
        timeout = int(self.opts.heartbeat_timeout * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
        sock.setsockopt(zmq.HEARTBEAT_TTL, min(timeout, 6_553_500))

    async def close(self) -> None:
        """Say goodbye to every peer, wait (bounded) until each has acknowledged everything we
        sent, then close all sockets. Called by the runtime after its processes are gone."""
        self._closing = True
        # Messages queued for a node we are still connecting to go out once it is up.
        connecting = []
        for peer in self.peers.values():
            if peer.state == _CONNECTING and (peer.batch.parts or peer.sealed):
                fut: asyncio.Future[bool] = self.loop.create_future()
                peer.waiters.append(fut)
                connecting.append(fut)
        if connecting:
            await asyncio.wait(connecting, timeout=self.opts.shutdown_timeout)
        self._flush()
        waits = []
        for peer in list(self.peers.values()):
            if peer.state == _UP:
                peer.bye_waiter = self.loop.create_future()
                waits.append(peer.bye_waiter)
                self._enqueue(peer, [OP_BYE, "connection_closed"])
        self._flush()
        if waits:
            await asyncio.wait(waits, timeout=self.opts.shutdown_timeout)
        for peer in list(self.peers.values()):
            self._node_down(peer, "connection_closed")
        self.loop.remove_reader(self.router.FD)
        if self.router_mon is not None:
            self.loop.remove_reader(self.router_mon.FD)
            self.router.disable_monitor()
            self.router_mon.close(0)
        self.router.close(0)
        _gate.unregister(_zmq_context(), self.zap_domain)
        self.rejects.flush()
        if self.addr.transport == "ipc":
            with contextlib.suppress(OSError):  # ZeroMQ leaves the socket file behind
                os.unlink(self.addr.path)
        if self.fdchan is not None:
            self.loop.remove_reader(self.fdchan.fileno())
            self.fdchan.close()

    # -- public operations -----------------------------------------------------------------

    def nodes(self) -> list[str]:
        hidden = self.hidden
        return [p.name for p in self.peers.values() if p.state == _UP and p.name not in hidden]

    # -- nodes this one starts (device workers) ------------------------------------------------

    def expect(self, name: str) -> int:
        """A hidden node of ours named `name` is starting: hold what is sent to it until
        `release` (it listens) or `lost` (it never will). Returns the spawn slot our pids
        there will have, for the node to `pre_grant`."""
        name = parse_node_name(name).name
        self.hidden.add(name)
        peer = self.peers.get(name)
        if peer is None:
            peer = Peer(parse_node_name(name))
            peer.deferred = True
            self.peers[name] = peer
        return peer.slot

    def pre_grant(self, node: str, slot: int) -> None:
        """Grant `node` the spawn slot `slot` before it connects (it started us, and chose
        the slot): operations other nodes send to pids it spawns here are held until its
        spawn requests arrive, even if they come before it does."""
        self.pre_granted[slot] = node
        self.slots[slot] = node
        self.slot_seen[slot] = 0
        self.used_slots.add(slot)

    def release(self, name: str) -> None:
        """The node `expect` named listens now: connect to it."""
        peer = self.peers.get(name)
        if peer is not None and peer.deferred:
            peer.deferred = False
            self._start_connect(peer)

    def lost(self, name: str) -> None:
        """The node `name` is gone for certain (its OS process exited): tell everyone now,
        without waiting for heartbeats or ZeroMQ to notice."""
        peer = self.peers.get(name)
        if peer is not None:
            self._node_down(peer, "noconnection")
        else:  # never connected: still, its links and monitors must fire
            self._fire_noconnection(name, "noconnection")
        self.hidden.discard(name)

    async def connect(self, name: str) -> bool:
        addr = parse_node_name(name)
        if addr.name == self.name:
            return True
        peer = self._peer(addr.name)
        if peer is None:
            return False
        if peer.state == _UP:
            return True
        fut: asyncio.Future[bool] = self.loop.create_future()
        peer.waiters.append(fut)
        return await fut

    def disconnect(self, name: str) -> bool:
        peer = self.peers.get(parse_node_name(name).name)
        if peer is None:
            return False
        if peer.state == _UP:
            self._enqueue(peer, [OP_BYE, "disconnect"])
            self._flush_peer(peer)
        self._node_down(peer, "disconnect", linger=True)  # the goodbye must still go out
        return True

    def monitor_node(self, watcher: Pid, name: str, flag: bool) -> None:
        name = parse_node_name(name).name
        if name == self.name:
            return
        watchers = self.node_monitors.setdefault(name, [])
        if not flag:
            with contextlib.suppress(ValueError):
                watchers.remove(watcher)
            return
        watchers.append(watcher)
        self._peer(name)  # connect if we are not already; a failure delivers NodeDown

    def send(self, dest: Pid, msg: Any) -> None:
        peer = self.peers.get(dest.node) or self._peer(dest.node)  # the hot path: one lookup
        if peer is not None:
            self._enqueue(peer, [OP_SEND, dest.id, dest.creation, msg])

    def send_name(self, name: str, node: str, msg: Any) -> None:
        # The hot path: `node` is a connected node's real name, so no parsing.
        peer = self.peers.get(node) or self._peer(parse_node_name(node).name)
        if peer is not None:
            self._enqueue(peer, [OP_SEND_NAME, name, msg])

    def cast_name(self, name: str, node: str, request: Any) -> None:
        """`nb.cast` to ``(name, node)``: the receiver builds ``("$gen_cast", request)``, one
        tuple less to encode and decode per cast."""
        peer = self.peers.get(node) or self._peer(parse_node_name(node).name)
        if peer is not None:
            self._enqueue(peer, [OP_CAST_NAME, name, request])

    def reply(self, to: Pid, ref: Ref, value: Any) -> None:
        peer = self._peer(to.node)
        if peer is not None:
            self._enqueue(peer, [OP_REPLY, to.id, to.creation, ref, value])

    def link(self, me: Process, target: Pid) -> None:
        if me.links is None:
            me.links = set()
        me.links.add(target)
        peer = self._peer(target.node)
        if peer is not None:
            self._enqueue(peer, [OP_LINK, me.pid, target.id, target.creation])

    def unlink(self, me: Pid, target: Pid) -> None:
        peer = self.peers.get(target.node)
        if peer is not None:
            self._enqueue(peer, [OP_UNLINK, me, target.id, target.creation])

    def exit_signal(self, sender: Pid, target: Pid, reason: Any, from_link: bool) -> None:
        peer = self._peer(target.node) if not from_link else self.peers.get(target.node)
        if peer is not None:
            item = [OP_EXIT, sender, target.id, target.creation, reason, from_link]
            self._enqueue_reason(peer, item, 4)

    def monitor(self, me: Process, target: Pid | tuple[str, str]) -> Ref:
        ref = Ref(self.name)
        if me.monitors is None:
            me.monitors = {}
        me.monitors[ref] = target
        if isinstance(target, Pid):
            peer = self._peer(target.node)
            if peer is not None:
                self._enqueue(peer, [OP_MONITOR, me.pid, ref, target.id, target.creation])
        else:
            peer = self._peer(parse_node_name(target[1]).name)
            if peer is not None:
                self._enqueue(peer, [OP_MONITOR, me.pid, ref, target[0], None])
        return ref

    def demonitor(self, ref: Ref, target: Pid | tuple[str, str]) -> None:
        node = target.node if isinstance(target, Pid) else target[1]
        peer = self.peers.get(node)
        if peer is not None:
            self._enqueue(peer, [OP_DEMONITOR, ref])

    def down(self, watcher: Pid, ref: Ref, target: Any, reason: Any) -> None:
        peer = self.peers.get(watcher.node)
        if peer is not None:
            item = [OP_DOWN, watcher.id, watcher.creation, ref, target, reason]
            self._enqueue_reason(peer, item, 5)

    def spawn(
        self,
        fn: Any,
        args: tuple[Any, ...],
        node: str,
        name: str | None,
        link_to: Process | None,
        monitor_by: Process | None,
    ) -> tuple[Pid, Ref | None]:
        """Remote spawn: allocate the pid now, ask `node` to start it, return at once."""
        peer = self._peer(parse_node_name(node).name)
        if peer is None:
            raise ValueError(f"cannot spawn on {node!r}: it is this node's own name")
        # Our device workers can import this program's __main__, as multiprocessing does.
        module, qualname = _function_path(fn, main_ok=peer.name in self.hidden)
        # The target's creation once the handshake told it; a spawn asked for before that
        # gets creation 0, which the target accepts only within the slot it granted us.
        pid = Pid(peer.name, (peer.slot << SLOT_SHIFT) | next(peer.next_spawn), peer.creation or 0)
        ref = Ref(self.name) if monitor_by is not None else None
        item = [
            OP_SPAWN,
            pid.id,
            pid.creation,
            module,
            qualname,
            list(args),
            name,
            link_to.pid if link_to is not None else None,
            [monitor_by.pid, ref] if monitor_by is not None else None,
        ]
        self._enqueue(peer, item)  # TypeError here if an argument cannot cross
        if link_to is not None:
            if link_to.links is None:
                link_to.links = set()
            link_to.links.add(pid)
        if monitor_by is not None:
            assert ref is not None
            if monitor_by.monitors is None:
                monitor_by.monitors = {}
            monitor_by.monitors[ref] = pid
        return pid, ref

    # -- for global names and process groups ----------------------------------------------------

    def register_handler(self, op: int, handler: Callable[[str, list[Any]], None]) -> None:
        if op < OP_USER or op in self.handlers:
            raise ValueError(f"operation code {op} is reserved or taken")
        self.handlers[op] = handler

    def send_op(self, node: str, item: list[Any]) -> None:
        """Send a handler's operation (``item[0]`` is its code) to `node`, connecting if needed."""
        peer = self._peer(node)
        if peer is not None:
            self._enqueue(peer, item)

    # -- peers and connections -----------------------------------------------------------------

    def _peer(self, name: str) -> Peer | None:
        """The peer for a node name, starting a connection if there is none; None for us."""
        peer = self.peers.get(name)
        if peer is not None:
            return peer
        if name == self.name:
            return None
        if self._closing:
            return None  # no new connections while the node shuts down
        addr = parse_node_name(name)
        peer = Peer(addr)
        self.peers[addr.name] = peer
        # Connect from the loop, not now: the caller first records its links and monitors
        # on the peer's node, so that a connection refused at once still reaches them.
        self.loop.call_soon(self._start_connect, peer)
        return peer

    def _start_connect(self, peer: Peer) -> None:
        if peer.state != _CONNECTING or peer.deferred:
            return  # given up before it started (the node is closing), or not listening yet
        sock = _zmq_context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, int(self.opts.shutdown_timeout * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # a lost connection is a lost node, not a retry
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # the server only sends handshake replies
        self._heartbeats(sock)
        if self.curve is not None:
            sock.curve_serverkey = self.curve[0]
            pub, sec = zmq.curve_keypair()
            sock.curve_publickey = pub
            sock.curve_secretkey = sec
        else:
            sock.plain_username, sock.plain_password = _gate.credentials(self.cookie, peer.name)
        peer.sock = sock
        peer.handle = sock.underlying
        peer.mon = sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            _monitor_address(),
        )
        sock.connect(peer.addr.endpoint)
        peer.timer = self.loop.call_later(self.opts.connect_timeout, self._connect_timeout, peer)
        peer.nonce = new_nonce()
        self._handshake_send(peer, [b"hello", self.name, self.creation, peer.nonce, peer.slot])
        self.loop.add_reader(sock.FD, self._on_dealer, peer)
        self.loop.add_reader(peer.mon.FD, self._on_monitor, peer)
        # Drain both once, to arm their edge-triggered ZMQ_FDs; this may already find the
        # connection refused, and take the peer down.
        self._on_monitor(peer)
        self._check_events(peer)

    def _connect_timeout(self, peer: Peer) -> None:
        if peer.state == _CONNECTING:
            log.warning(
                "node %s: no handshake with %s within the connect timeout", self.name, peer.name
            )
            self._node_down(peer, "noconnection")

    def _check_events(self, peer: Peer) -> None:
        # After a send, ZMQ_FD may not fire for what is already readable: look now.
        sock = peer.sock
        if sock is not None and sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            self.loop.call_soon(self._on_dealer, peer)

    def _handshake_send(self, peer: Peer, msg: list[Any]) -> None:
        """Send a handshake step; if ZeroMQ cannot take it yet, `_on_dealer` sends it later."""
        peer.handshake_out = [MAGIC, msgpack.packb(msg)]
        self._handshake_retry(peer)

    def _handshake_retry(self, peer: Peer) -> None:
        if peer.handshake_out is None or peer.sock is None:
            return
        try:
            peer.sock.send_multipart(peer.handshake_out, _NOBLOCK)
        except zmq.Again:
            return  # no connection to queue it on yet: the DEALER's FD will fire
        peer.handshake_out = None
        self._check_events(peer)

    def _on_dealer(self, peer: Peer) -> None:
        """Readable DEALER: handshake replies from the server; writable: send what waited."""
        sock = peer.sock
        if sock is None:
            return
        if peer.handshake_out is not None:
            self._handshake_retry(peer)
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            self._handshake_reply(peer, frames)
            if peer.sock is None:
                return
        if peer.state == _UP and peer.sealed and sock.getsockopt(_EVENTS) & _POLLOUT:  # type: ignore[operator]
            self._flush_peer(peer)

    def _handshake_reply(self, peer: Peer, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2 or frames[0] != MAGIC:
                raise ValueError("not a handshake frame")
            msg = msgpack.unpackb(frames[1], raw=False)
            kind = msg[0]
        except Exception:
            log.warning(
                "node %s: dropped a malformed handshake reply from %s", self.name, peer.name
            )
            return
        if kind == "bye_ack":
            if peer.bye_waiter is not None and not peer.bye_waiter.done():
                peer.bye_waiter.set_result(None)
            return
        if peer.state != _CONNECTING:
            return
        if kind == "challenge" and len(msg) == 5:
            _, server_name, creation, nonce_s, proof = msg
            if server_name != peer.name:
                log.error(
                    "node %s: connected to %s, but that node calls itself %r",
                    self.name,
                    peer.name,
                    server_name,
                )
                self._node_down(peer, "noconnection")
                return
            if not verify(self.cookie, b"server", peer.nonce, server_name, proof):
                log.error(
                    "node %s: %s failed to prove the cookie (different cookies?)",
                    self.name,
                    peer.name,
                )
                self._node_down(peer, "noconnection")
                return
            if type(creation) is not int or type(nonce_s) is not bytes:
                self._node_down(peer, "noconnection")
                return
            peer.creation = creation
            proof = sign(self.cookie, b"client", nonce_s, self.name)
            auth: list[Any] = [b"auth", proof, self.host]
            if self.is_hidden:  # so that it introduces us to nobody (Erlang's -hidden)
                auth.append(True)
            self._handshake_send(peer, auth)
        elif kind == "welcome" and len(msg) in (2, 3):
            if len(msg) == 3 and self.host is not None:
                found = same_host(self.host, msg[2])
                if found is not None:
                    peer.fd_address = found[1]
            self._node_up(peer, msg[1])
        elif kind == "denied":
            log.error(
                "node %s: %s refused the connection: %s",
                self.name,
                peer.name,
                msg[1] if len(msg) > 1 else "?",
            )
            self._node_down(peer, "noconnection")

    def _node_up(self, peer: Peer, their_nodes: Any) -> None:
        peer.state = _UP
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        log.info("node %s: connected to %s", self.name, peer.name)
        if _telemetry.handlers:
            _telemetry.execute(
                ("numbeam", "node", "up"),
                {"system_time": time.time_ns()},
                {"node": self.name, "peer": peer.name},
            )
        self._reencode(peer)
        for fut in peer.waiters:
            if not fut.done():
                fut.set_result(True)
        peer.waiters.clear()
        if peer.batch.parts or peer.sealed:
            self._mark_dirty(peer)
        # Transitive connections: meet the nodes it knows, and introduce it to ours (a
        # hidden node is introduced to nobody, and meets nobody).
        if peer.name not in self.hidden and not self.is_hidden:
            for other in list(self.peers.values()):
                if other is not peer and other.state == _UP and other.name not in self.hidden:
                    self._enqueue(other, [OP_NODES, [peer.name]])
        if isinstance(their_nodes, list):
            self._meet(their_nodes)
        for hook in self.node_up_hooks:
            try:
                hook(peer.name)
            except Exception:
                log.exception("node %s: a node-up hook failed", self.name)

    def _reencode(self, peer: Peer) -> None:
        """Encode what was queued before the handshake again, with tensor handles, if the peer
        is on this host and some of it had tensors in shared memory."""
        items, peer.unsent = peer.unsent, None
        if items and peer.unsent_shared and peer.fd_address is not None:
            peer.batch = _Batch()
            peer.sealed.clear()
            for item in items:
                self._enqueue(peer, item)

    def _meet(self, names: list[Any]) -> None:
        if self.is_hidden:
            return
        for n in names:
            if type(n) is str and n != self.name and n not in self.peers:
                try:
                    self._peer(parse_node_name(n).name)
                except ValueError:
                    log.warning("node %s: ignored a bad node name %r", self.name, n)

    def _on_monitor(self, peer: Peer) -> None:
        mon = peer.mon
        if mon is None:
            return
        while True:
            try:
                raw = mon.recv_multipart(zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return
            event = parse_monitor_message(raw)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.error(
                    "node %s: %s refused the connection: wrong cookie (different cookies?)",
                    self.name,
                    peer.name,
                )
                self._node_down(peer, "noconnection")
                return
            if event & (zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED):
                self._node_down(peer, "connection_closed" if peer.state == _UP else "noconnection")
                return

    def _node_down(self, peer: Peer, reason: str, linger: bool = False) -> None:
        """The link to `peer` is gone: close it and tell every process that cares.

        With `linger`, ZeroMQ still delivers what is queued (a goodbye, its acknowledgement)
        for up to a second; otherwise the peer is lost and so is anything queued for it.
        """
        if peer.state == _DOWN:
            return
        was_up = peer.state == _UP
        peer.state = _DOWN
        name = peer.name
        if self.peers.get(name) is peer:
            del self.peers[name]
        if peer.timer is not None:
            peer.timer.cancel()
        if peer.mon is not None:
            self.loop.remove_reader(peer.mon.FD)
            with contextlib.suppress(zmq.ZMQError):
                assert peer.sock is not None
                peer.sock.disable_monitor()
            peer.mon.close(0)
            peer.mon = None
        if peer.sock is not None:
            self.loop.remove_reader(peer.sock.FD)
            peer.sock.close(1000 if linger else 0)
            peer.sock = None
        enc = self.encoder
        for b in (peer.batch, *peer.sealed):
            if enc.fds is b.fds:  # the encoder keeps nothing of a peer that is gone
                enc.fds, enc.fd_at, enc.segments = [], {}, None
            b.segments.clear()
        if peer.fd_address is not None and self.fdchan is not None:
            sock = self.fdchan.senders.get(peer.fd_address)
            if sock is not None:
                self.loop.remove_writer(sock.fileno())
                self.fdchan.drop_sender(peer.fd_address)
        for fut in peer.waiters:
            if not fut.done():
                fut.set_result(False)
        if peer.bye_waiter is not None and not peer.bye_waiter.done():
            peer.bye_waiter.set_result(None)
        if was_up:
            log.info("node %s: lost %s (%s)", self.name, name, reason)
            if _telemetry.handlers:
                _telemetry.execute(
                    ("numbeam", "node", "down"),
                    {"system_time": time.time_ns()},
                    {"node": self.name, "peer": name, "reason": reason},
                )
        # Forget its incoming connection too: nothing more is accepted from that incarnation.
        for ident, inc in list(self.incoming.items()):
            if inc.name == name:
                self._forget_incoming(ident, inc)
        for hook in self.node_down_hooks:
            try:
                hook(name)
            except Exception:
                log.exception("node %s: a node-down hook failed", self.name)
        self._fire_noconnection(name, reason)

    def _forget_incoming(self, ident: bytes, inc: _Incoming) -> None:
        del self.incoming[ident]
        if inc.fd_pid is not None and self.fdchan is not None:
            self.fdchan.forget(inc.fd_pid)
        if self.slots.get(inc.slot) == inc.name:
            del self.slots[inc.slot]
            self.slot_seen.pop(inc.slot, None)
            for pid_id in [i for i in self.pending_spawn if i >> SLOT_SHIFT == inc.slot]:
                held = self.pending_spawn.pop(pid_id)
                for src, item in held:  # the spawn will never come: they meet no process
                    self._unhold(src)
                    self._dispatch(src, item)

    def _fire_noconnection(self, name: str, reason: str) -> None:
        rt = self.rt
        for proc in list(rt._procs.values()):
            if proc.links:
                for other in [p for p in proc.links if p.node == name]:
                    proc.links.discard(other)
                    rt._signal(proc, other, "noconnection")
            if proc.monitors:
                for ref, target in list(proc.monitors.items()):
                    node = target.node if type(target) is Pid else target[1]
                    if node == name:
                        del proc.monitors[ref]
                        rt._deliver(proc, Down(ref, target, "noconnection"))
            if proc.monitored_by:
                for ref, watcher in list(proc.monitored_by.items()):
                    if watcher.node == name:
                        del proc.monitored_by[ref]
        for watcher in self.node_monitors.pop(name, ()):
            w = rt._lookup(watcher)
            if w is not None:
                rt._deliver(w, NodeDown(name, reason))

    # -- sending ----------------------------------------------------------------------------

    def _enqueue(self, peer: Peer, item: list[Any]) -> None:
        batch = peer.batch
        n = len(batch.frames)
        enc = self.encoder
        if peer.fd_address is None:
            enc.handle_seq = None
        else:
            enc.peer = peer.name  # (CUDA handles record which node imports them)
            token = batch.token
            if token is None:
                chan = self.fdchan
                assert chan is not None
                chan.token = token = batch.token = chan.token + 1
            enc.handle_seq = token
            if enc.fds is not batch.fds:  # (a batch's lists are emptied in place when sent)
                enc.fds = batch.fds
                enc.fd_at = batch.fd_at
                enc.segments = batch.segments
        unsent = peer.unsent
        if unsent is None:  # the usual case: the peer is up
            try:
                data = enc.encode(item, batch.frames)
            except BaseException:
                del batch.frames[n:]
                raise
        else:
            data = self._encode_unsent(peer, unsent, item, batch)
        batch.parts.append(data)
        batch.size += len(data)
        if len(batch.frames) > n:
            for f in batch.frames[n:]:
                batch.size += f.nbytes
        if batch.size >= BATCH_BYTES:
            # A full batch goes out now, so the peer decodes it while we encode the next.
            peer.sealed.append(batch)
            peer.batch = _Batch()
            if peer.state == _UP:
                self._flush_peer(peer)
        if not peer.dirty:  # (_mark_dirty, inline: this runs for every message)
            peer.dirty = True
            self._dirty.append(peer)
            if not self._flush_scheduled and not self.rt._drain_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)

    def _encode_unsent(
        self, peer: Peer, unsent: list[list[Any]], item: list[Any], batch: _Batch
    ) -> bytes:
        """Encode for a peer not up yet, keeping the item in case it must be encoded again
        (see _reencode)."""
        enc = self.encoder
        n = len(batch.frames)
        enc.shared_bytes = False
        try:
            data = enc.encode(item, batch.frames)
        except BaseException:
            del batch.frames[n:]
            raise
        if self.fdchan is not None:
            unsent.append(item)
            if enc.shared_bytes:
                peer.unsent_shared = True
        return data

    def _enqueue_reason(self, peer: Peer, item: list[Any], at: int) -> None:
        """Enqueue an item carrying an exit reason; a reason that cannot cross goes as text."""
        try:
            self._enqueue(peer, item)
        except TypeError:
            reason = item[at]
            item[at] = RemoteError(type(reason).__qualname__, repr(reason))
            self._enqueue(peer, item)

    def _mark_dirty(self, peer: Peer) -> None:
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)
        # A pending drain of the run queue flushes when it ends; otherwise flush from the loop.
        if not self._flush_scheduled and not self.rt._drain_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _after_drain(self) -> None:
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for peer in dirty:
                peer.dirty = False
                if peer.state == _UP:
                    self._flush_peer(peer)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._after_drain()

    def _flush_peer(self, peer: Peer) -> None:
        batch = peer.batch
        sealed = peer.sealed
        sock = peer.sock
        assert sock is not None
        if not sealed and not batch.frames and not batch.fds:
            # The common case (small messages, nothing queued before): one send, and the
            # batch object is emptied for the next messages instead of made anew.
            parts = batch.parts
            if not parts:
                return
            n = len(parts)
            body = _HEADERS[n] + parts[0] if n == 1 else _array_header(n) + b"".join(parts)
            if _fast is not None:
                sent = _fast.send(peer.handle, body)
            else:
                try:
                    sock.send(body, _NOBLOCK)
                    sent = True
                except zmq.Again:
                    sent = False
            if sent:
                # (it keeps its token: a token is spent only by a batch that passes descriptors)
                batch.parts = []
                batch.size = 0
                return
        if batch.parts:
            sealed.append(batch)
            peer.batch = _Batch()
        while sealed:
            b = sealed[0]
            if b.fds and not self._pass_fds(peer, b):
                return
            parts = b.parts
            n = len(parts)
            body = _HEADERS[n] + parts[0] if n == 1 else _array_header(n) + b"".join(parts)
            try:
                if b.frames:
                    sock.send_multipart([body, *b.frames], _NOBLOCK, copy=False)
                elif _fast is not None:
                    if not _fast.send(peer.handle, body):
                        raise zmq.Again
                else:
                    sock.send(body, _NOBLOCK)
            except zmq.Again:
                # Back-pressure: ZeroMQ's queue is full. Keep it; the DEALER's readiness
                # (its FD) calls _on_dealer, which flushes again.
                self._check_events(peer)
                return
            sealed.popleft()

    def _pass_fds(self, peer: Peer, b: _Batch) -> bool:
        """Pass a batch's segment descriptors ahead of it; False: wait, the peer's queue is full
        (the batch stays sealed, and goes once the peer has taken some)."""
        chan = self.fdchan
        address = peer.fd_address
        assert chan is not None and address is not None and b.token is not None
        try:
            chan.send(address, b.token, b.fds)
        except BlockingIOError:
            sock = chan.sender(address)
            self.loop.add_writer(sock.fileno(), self._fds_writable, peer, sock)
            return False
        except OSError as e:
            # The node is going (its socket is gone); its handles will not resolve there.
            log.warning("node %s: cannot pass tensors to %s: %s", self.name, peer.name, e)
        # Emptied in place: the encoder may still point at these lists (see _enqueue).
        b.fds.clear()
        b.fd_at.clear()
        b.segments.clear()
        return True

    def _fds_writable(self, peer: Peer, sock: Any) -> None:
        self.loop.remove_writer(sock.fileno())
        if peer.state == _UP:
            self._flush_peer(peer)

    # -- receiving ---------------------------------------------------------------------------

    def _on_router(self) -> None:
        rt = self.rt
        # The processes these messages wake run once all are received, not in a callback.
        pending = rt._hold_drain()
        try:
            if _fast is None:
                self._receive_pyzmq()
                return
            incoming = self.incoming
            recv_router = _fast.recv_router
            handle = self.router_handle
            left = 1000
            while True:
                # Messages of two frames (identity, batch or handshake step) come from C,
                # with no exception at the end; a message with more frames ends the list, and
                # its further frames (large arrays: zero-copy) are taken here.
                msgs = recv_router(handle, left)
                for ident, body, more in msgs:
                    extra: list[Any] = _NO_EXTRA
                    if more:
                        extra = self._recv_extra()
                    inc = incoming.get(ident)
                    if inc is not None and inc.authed:
                        self._on_batch(inc, body, extra)
                    else:
                        self._on_handshake(ident, inc, body, extra)
                if not msgs or (not msgs[-1][2] and len(msgs) < left):
                    break  # none left: the edge-triggered FD is armed again
                left -= len(msgs)
                if left <= 0:
                    self.loop.call_soon(self._on_router)  # more waiting: let other work run
                    break
        finally:
            rt._release_drain(pending)

    def _recv_extra(self) -> list[Any]:
        """The further frames of the message being received (large arrays: zero-copy)."""
        extra = []
        more = True
        while more:
            frame = self.router.recv(copy=False)
            extra.append(frame)
            more = frame.more
        return extra

    def _receive_pyzmq(self) -> None:
        """What _on_router does when the C extension is not there: the same, through pyzmq."""
        r = self.router
        recv = r.recv
        getsockopt = r.getsockopt
        incoming = self.incoming
        n = 1000
        # The FD fired, so a message is most likely there: take it without asking first.
        # After it, ask EVENTS rather than catch zmq.Again (slow to raise); reading EVENTS until
        # nothing is left also re-arms the edge-triggered ZMQ_FD.
        try:
            ident = recv(_NOBLOCK)
        except zmq.Again:
            ident = None
        while ident is not None or getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            if not n:
                self.loop.call_soon(self._on_router)  # more waiting: let other work run
                break
            n -= 1
            if ident is None:
                ident = recv()
            body = recv()
            extra: list[Any] = []
            while getsockopt(_RCVMORE):
                extra.append(recv(copy=False))
            inc = incoming.get(ident)
            if inc is not None and inc.authed:
                self._on_batch(inc, body, extra)
            else:
                self._on_handshake(ident, inc, body, extra)
            ident = None

    def _on_router_monitor(self) -> None:
        mon = self.router_mon
        assert mon is not None
        while True:
            try:
                raw = mon.recv_multipart(zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return
            ev = parse_monitor_message(raw)
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self.rejects.note("a connection that broke the ZMTP protocol")
            elif ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self.rejects.note("a connection that did not finish the ZMTP handshake")
            else:
                log.debug(
                    "node %s: an incoming connection closed (by the peer, or for a "
                    "frame over max_message_size)",
                    self.name,
                )

    def _on_handshake(
        self, ident: bytes, inc: _Incoming | None, magic: bytes, extra: list[Any]
    ) -> None:
        try:
            if magic != MAGIC or len(extra) != 1:
                raise ValueError("not a handshake frame")
            if len(extra[0]) > HANDSHAKE_FRAME:
                raise ValueError(f"a handshake frame over {HANDSHAKE_FRAME} bytes")
            msg = msgpack.unpackb(extra[0].bytes, raw=False)
            if type(msg) is not list or not msg:
                raise ValueError("not a handshake message")
            kind = msg[0]
            if kind == b"hello" and inc is None:
                _, name, creation, nonce_c, slot = msg
                addr = parse_node_name(name)
                if (
                    type(creation) is not int
                    or type(nonce_c) is not bytes
                    or type(slot) is not int
                    or not 0 < slot < 1 << 23
                ):
                    raise ValueError("bad hello")
                self._hello(ident, addr.name, creation, nonce_c, slot)
            elif kind == b"auth" and inc is not None and len(msg) in (2, 3, 4):
                self._auth(ident, inc, msg[1], msg[2] if len(msg) >= 3 else None)
                if len(msg) == 4 and msg[3] is True and inc.authed:
                    # A hidden node: not in nodes(), introduced to nobody. (After _auth: its
                    # connection back to it is only made from the loop, later.)
                    self.hidden.add(inc.name)
            else:
                raise ValueError(f"unexpected handshake step {kind!r}")
        except Exception as e:
            # Aggregated, and the identity (up to 255 bytes of the peer's choosing) cut short.
            self.rejects.note(
                "a frame from an unauthenticated connection",
                f"{str(e)[:60]} [ident {ident[:8].hex()}, {len(magic)} bytes]",
            )

    def _hello(self, ident: bytes, name: str, creation: int, nonce_c: bytes, slot: int) -> None:
        inc = _Incoming(name, creation, slot, new_nonce())
        self.incoming[ident] = inc
        self.loop.call_later(self.opts.connect_timeout, self._hello_expired, ident, inc)
        proof = sign(self.cookie, b"server", nonce_c, self.name)
        self._router_send(ident, ["challenge", self.name, self.creation, inc.nonce, proof])

    def _hello_expired(self, ident: bytes, inc: _Incoming) -> None:
        # A connection that said hello but never proved the cookie is forgotten.
        if not inc.authed and self.incoming.get(ident) is inc:
            del self.incoming[ident]

    def _auth(self, ident: bytes, inc: _Incoming, proof: Any, host: Any) -> None:
        if not verify(self.cookie, b"client", inc.nonce, inc.name, proof):
            log.error("node %s: refused a connection from %r: wrong cookie", self.name, inc.name)
            del self.incoming[ident]
            self._router_send(ident, ["denied", "cookie"])
            return
        old = self.peers.get(inc.name)
        if old is not None and old.creation is not None and old.creation != inc.creation:
            self._node_down(old, "connection_closed")  # it restarted: the old one is gone
        for other_ident, other in list(self.incoming.items()):
            if other.name == inc.name and other_ident != ident:
                self._forget_incoming(other_ident, other)
        if inc.slot in self.used_slots and self.pre_granted.pop(inc.slot, None) != inc.name:
            del self.incoming[ident]
            self._router_send(ident, ["denied", "slot"])
            return
        inc.authed = True
        self.slots[inc.slot] = inc.name
        self.used_slots.add(inc.slot)
        self.slot_seen.setdefault(inc.slot, 0)
        fdchan = self.fdchan
        if fdchan is not None and self.host is not None:
            found = same_host(self.host, host)
            if found is not None:
                inc.fd_pid = found[0]
                fdchan.allowed.add(found[0])
                inc.claim = functools.partial(fdchan.claim, found[0])
        self._router_send(ident, ["welcome", self.nodes(), self.host])
        self._peer(inc.name)  # connect back: each direction has its own channel

    def _router_send(self, ident: bytes, msg: list[Any]) -> None:
        try:
            self.router.send_multipart([ident, MAGIC, msgpack.packb(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.info("node %s: could not answer a handshake: %s", self.name, e)

    def _on_batch(self, inc: _Incoming, body: bytes, extra: list[Any]) -> None:
        try:
            self.decoder.claim = inc.claim
            self.decoder.peer = inc.name
            items = self.decoder.decode(body, extra)
            if type(items) is not list:
                raise WireError("a batch must be an array of operations")
        except WireError as e:
            log.warning("node %s: dropped a malformed batch from %s: %s", self.name, inc.name, e)
            return
        src = inc.name
        procs = self.rt._procs
        names = self.rt._names
        deliver = self.rt._deliver
        for item in items:
            try:
                # The common case inline: a message to a live process of ours.
                if type(item) is list and len(item) == 4 and item[0] == OP_SEND:
                    proc = procs.get(item[1])
                    if proc is not None and proc.pid.creation == item[2]:
                        deliver(proc, item[3])
                        continue
                elif type(item) is list and len(item) == 3:
                    op = item[0]
                    if op == OP_SEND_NAME:
                        proc = names.get(item[1])  # (a str key; a bad one finds nothing)
                        if proc is not None:
                            deliver(proc, item[2])
                        continue
                    if op == OP_CAST_NAME:
                        proc = names.get(item[1])
                        if proc is not None:
                            deliver(proc, ("$gen_cast", item[2]))
                        continue
                self._dispatch(src, item)
            except Exception as e:
                log.warning(
                    "node %s: dropped a bad operation from %s: %s (%r)",
                    self.name,
                    src,
                    e,
                    item if len(repr(item)) < 200 else "...",
                )

    def _local(self, src: str, item: list[Any], pid_id: Any, creation: Any) -> Process | None:
        """The live local process (id, creation) names, or None; holds `item` for a pid whose
        remote spawn has not arrived yet."""
        proc = self.rt._procs.get(pid_id)
        if proc is not None and proc.pid.creation == creation:
            return proc
        if type(pid_id) is int and pid_id > _LOCAL_IDS and creation in (self.creation, 0):
            slot = pid_id >> SLOT_SHIFT
            seen = self.slot_seen.get(slot)
            if seen is not None and pid_id & _LOCAL_IDS > seen:
                held = self.held.get(src, 0)
                if held >= MAX_HELD:
                    # Bounded: past it, the pid is treated as one that does not exist.
                    self.rejects.note(
                        f"an operation past {MAX_HELD} held for pids not spawned yet",
                        f"from {src}",
                    )
                    return None
                self.held[src] = held + 1
                self.pending_spawn.setdefault(pid_id, []).append((src, item))
                return _HELD
        return None

    def _unhold(self, src: str) -> None:
        n = self.held.get(src, 0) - 1
        if n > 0:
            self.held[src] = n
        else:
            self.held.pop(src, None)

    def _dispatch(self, src: str, item: list[Any]) -> None:
        op = item[0]
        rt = self.rt
        if op == OP_SEND:
            proc = self._local(src, item, item[1], item[2])
            if proc is not None and proc is not _HELD:
                rt._deliver(proc, item[3])
        elif op == OP_SEND_NAME:
            proc = rt._names.get(item[1])
            if proc is not None:
                rt._deliver(proc, item[2])
        elif op == OP_CAST_NAME:
            proc = rt._names.get(item[1])
            if proc is not None:
                rt._deliver(proc, ("$gen_cast", item[2]))
        elif op == OP_REPLY:
            proc = self._local(src, item, item[1], item[2])
            if proc is not None and proc is not _HELD:
                rt._reply(proc, item[3], item[4])  # only while the caller still waits
        elif op == OP_LINK:
            sender = _pid(item[1])
            proc = self._local(src, item, item[2], item[3])
            if proc is _HELD:
                return
            if proc is None:
                self.exit_signal(Pid(self.name, item[2], item[3]), sender, "noproc", True)
                return
            if proc.links is None:
                proc.links = set()
            proc.links.add(sender)
        elif op == OP_UNLINK:
            proc = self._local(src, item, item[2], item[3])
            if proc is not None and proc is not _HELD and proc.links:
                proc.links.discard(_pid(item[1]))
        elif op == OP_EXIT:
            sender = _pid(item[1])
            proc = self._local(src, item, item[2], item[3])
            if proc is None or proc is _HELD:
                return
            reason = item[4]
            if item[5]:  # a link broke
                if proc.links is None or sender not in proc.links:
                    return  # unlinked meanwhile
                proc.links.discard(sender)
                rt._signal(proc, sender, reason)
            elif type(reason) is str and reason == "kill":
                rt._kill(proc, "killed")
            else:
                rt._signal(proc, sender, reason)
        elif op == OP_MONITOR:
            watcher, ref = _pid(item[1]), item[2]
            if type(ref) is not Ref:
                raise ValueError("bad monitor ref")
            if type(item[3]) is str:
                proc = rt._names.get(item[3])
                target: Any = (item[3], self.name)
            else:
                proc = self._local(src, item, item[3], item[4])
                if proc is _HELD:
                    return
                target = Pid(self.name, item[3], item[4]) if proc is None else proc.pid
            if proc is None:
                self.down(watcher, ref, target, "noproc")
                return
            if proc.monitored_by is None:
                proc.monitored_by = {}
            proc.monitored_by[ref] = watcher
        elif op == OP_DEMONITOR:
            ref = item[1]
            for proc in rt._procs.values():
                if proc.monitored_by and proc.monitored_by.pop(ref, None) is not None:
                    break
        elif op == OP_DOWN:
            proc = self._local(src, item, item[1], item[2])
            ref = item[3]
            if proc is None or proc is _HELD or not proc.monitors:
                return
            if proc.monitors.pop(ref, None) is not None:
                rt._deliver(proc, Down(ref, item[4], item[5]))
        elif op == OP_SPAWN:
            self._remote_spawn(src, item)
        elif op == OP_NODES:
            self._meet(item[1])
        elif op == OP_BYE:
            # Acknowledge on the same connection: everything it sent before is now here.
            for ident, inc in list(self.incoming.items()):
                if inc.name == src:
                    self._router_send(ident, ["bye_ack"])
                    self._forget_incoming(ident, inc)
            peer = self.peers.get(src)
            if peer is not None:
                reason = item[1] if len(item) > 1 and type(item[1]) is str else "disconnect"
                self._node_down(peer, reason)
        else:
            handler = self.handlers.get(op)
            if handler is None:
                raise ValueError(f"unknown operation {op!r}")
            handler(src, item)

    def _remote_spawn(self, src: str, item: list[Any]) -> None:
        _, pid_id, creation, module, qualname, args, name, link_to, mon = item
        slot = pid_id >> SLOT_SHIFT
        if self.slots.get(slot) != src or type(args) is not list:
            raise ValueError("spawn request outside the sender's id range")
        if creation not in (self.creation, 0):
            raise ValueError("spawn request for another incarnation of this node")
        self.slot_seen[slot] = max(self.slot_seen.get(slot, 0), pid_id & _LOCAL_IDS)
        rt = self.rt
        if pid_id in rt._procs:
            raise ValueError("spawn request for an id in use")
        if name is not None and (type(name) is not str or name in rt._names):
            args, name = [ValueError(f"cannot register {name!r}: taken or not a str")], None
            module, qualname = __name__, "_fail"
        proc = rt._spawn(
            _remote_main,
            (module, qualname, tuple(args)),
            name,
            None,
            Pid(self.name, pid_id, creation),
        )
        proc.fn = f"{module}:{qualname}"  # what crash reports and process_info name
        if link_to is not None:
            lp = _pid(link_to)
            if proc.links is None:
                proc.links = set()
            proc.links.add(lp)
        if mon is not None:
            watcher, ref = _pid(mon[0]), mon[1]
            if proc.monitored_by is None:
                proc.monitored_by = {}
            proc.monitored_by[ref] = watcher
        for held_src, held in self.pending_spawn.pop(pid_id, ()):
            self._unhold(held_src)
            self._dispatch(held_src, held)

    def _intern_pid(self, node: str, id: int, creation: int) -> Pid:
        # Our own pids come back as the objects spawn made, which cache their process.
        if node == self.name:
            proc = self.rt._procs.get(id)
            if proc is not None and proc.pid.creation == creation:
                return proc.pid
            node = self.name
        return Pid(node, id, creation)


class _Held:
    """Marks an operation held until its remote-spawned target exists."""


_HELD: Any = _Held()


def _pid(value: Any) -> Pid:
    if type(value) is not Pid:
        raise ValueError(f"expected a pid, got {value!r}")
    return value


def _function_path(fn: Any, main_ok: bool = False) -> tuple[str, str]:
    """``(module, qualname)`` by which the target node imports `fn`; TypeError if it cannot.

    With `main_ok` (the target is a device worker of ours, which can load this program's
    script, see `main_loader`), a function of a script run as ``__main__`` is allowed too.
    """
    if isinstance(fn, str):
        module, sep, qualname = fn.partition(":")
        if not sep or not module or not qualname:
            raise ValueError(
                f"a remote function name looks like 'package.module:function', got {fn!r}"
            )
        return module, qualname
    mod: Any = getattr(fn, "__module__", None)
    qual: Any = getattr(fn, "__qualname__", None)
    if not isinstance(mod, str) or not isinstance(qual, str) or "<locals>" in qual:
        raise TypeError(
            f"remote spawn needs a module-level async function importable on the other node, "
            f"got {fn!r}"
        )
    if mod == "__main__":
        spec = getattr(__import__("__main__"), "__spec__", None)
        if spec is None and main_ok:
            return mod, qual
        if spec is None:
            raise TypeError(
                f"cannot spawn {qual} remotely: it is defined in a script run as __main__, "
                "which the other node cannot import; move it to a module (or run with -m)"
            )
        mod = spec.name
    return mod, qual


# In a device worker: loads the script its parent runs as __main__ (see numbeam.gpu._worker).
main_loader: Callable[[], Any] | None = None
# In a device worker: the listening socket its parent made for its address, which the next
# node started here binds (ZMQ_USE_FD) instead of a socket of its own.
preset_listen_fd: int | None = None


async def _remote_main(module: str, qualname: str, args: tuple[Any, ...]) -> Any:
    """The body of a remotely spawned process: import the function, then run it."""
    fn: Any
    if module == "__main__" and main_loader is not None:
        fn = main_loader()
    else:
        fn = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{module}:{qualname} is not an async function")
    return await fn(*args)


async def _fail(error: BaseException) -> None:
    raise error


def _on_cuda_release(src: str, item: list[Any]) -> None:
    from numbeam.gpu import _cuda

    if len(item) == 2:
        _cuda.release(src, item[1])


def _forget_cuda_node(name: str) -> None:
    cuda = sys.modules.get("numbeam.gpu._cuda")
    if cuda is not None:
        cuda.forget_node(name)


__all__ = ["Distribution", "Peer"]
