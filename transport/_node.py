"""Distribution: the ZeroMQ links between nodes, and remote process operations.

Each node binds one ROUTER socket at the address its name spells. To talk to a peer it
connects one DEALER to the peer's ROUTER, so a pair of nodes is joined by two one-way
channels, one per direction; simultaneous connects cannot clash, and everything one node sends
another travels one ordered channel, which keeps messages between a pair of processes in order.

`Distribution` is made of parts, each in a file of its own that reads top to bottom:

- `_handshake`: both sides of the handshake that proves the cookie (HMAC-SHA256, as Erlang's
  distribution handshake), grants a spawn range and says whether the node is hidden;
- `_outgoing`: the per-peer batches operations are coalesced into, and their flush;
- `_dispatch`: the receive loop on the ROUTER, and the dispatch of every operation;
- here: starting and stopping, the public operations the runtime calls, peers coming up and
  going down, and remote spawn.

`_ops` holds the constants they share (operation codes, bounds), `_state` the records of peers
and what the parts rely on one another for, `_sockets` the ZeroMQ context and socket options.
A server that authenticated a client connects back to it, and both tell each other the nodes
they know: connections are transitive, as in Erlang.

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
import importlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
from numbeam.actors import _telemetry
from numbeam.actors._types import Down, NodeDown, Pid, Ref
from numbeam.gpu import _devices
from numbeam.tensors._share import FdChannel

from . import _gate
from ._cookie import curve_keypair, resolve_cookie
from ._dispatch import Dispatch, _pid
from ._global import install as install_global_names
from ._handshake import Handshake
from ._names import parse_node_name
from ._ops import (
    _CONNECTING,
    _DOWN,
    _LOCAL_IDS,
    _UP,
    OP_BYE,
    OP_CAST_NAME,
    OP_CUDA_RELEASE,
    OP_DEMONITOR,
    OP_DOWN,
    OP_EXIT,
    OP_LINK,
    OP_MONITOR,
    OP_NODES,
    OP_REPLY,
    OP_SEND,
    OP_SEND_NAME,
    OP_SPAWN,
    OP_UNLINK,
    OP_USER,
    RCVHWM,
    SLOT_SHIFT,
)
from ._outgoing import Outgoing
from ._pg import install as install_process_groups
from ._sockets import _monitor_address, _zmq_context, heartbeats
from ._state import Peer, _Incoming
from ._wire import Decoder, Encoder

if TYPE_CHECKING:
    from numbeam.actors._runtime import Process, Runtime

log = logging.getLogger("numbeam.transport")


class Distribution(Handshake, Outgoing, Dispatch):
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
        heartbeats(r, self.opts)
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

    def _meet(self, names: list[Any]) -> None:
        if self.is_hidden:
            return
        for n in names:
            if type(n) is str and n != self.name and n not in self.peers:
                try:
                    self._peer(parse_node_name(n).name)
                except ValueError:
                    log.warning("node %s: ignored a bad node name %r", self.name, n)

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

    # -- remote spawn, on the target node ---------------------------------------------------

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


def import_path(module: str, qualname: str) -> Any:
    """The object ``module:qualname`` names (the inverse of `_function_path`): imported, or in
    a device worker for ``__main__``, from its parent's script. ImportError, AttributeError."""
    obj: Any
    if module == "__main__" and main_loader is not None:
        obj = main_loader()
    else:
        obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


async def _remote_main(module: str, qualname: str, args: tuple[Any, ...]) -> Any:
    """The body of a remotely spawned process: import the function, then run it."""
    fn = import_path(module, qualname)
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
