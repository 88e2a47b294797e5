"""The receive loop and the dispatch of every operation (the `Dispatch` part of `Distribution`).

All connections to a node arrive on its one ROUTER: a message from an authenticated connection
is a batch (see `_outgoing`), anything else is a handshake step (see `_handshake`). A batch is
decoded (`_wire`) and its operations run in order: messages to live local processes inline, the
rest through `_dispatch`, one branch per operation code of `_ops`, then the handlers extensions
registered (global names, process groups).

Remote spawn returns at once: the spawning node allocates the new pid itself, in a range of ids
(``slot << SLOT_SHIFT | n``) that this node reserved for it at the handshake. Operations another
node sends for such a pid before its spawn request has arrived are held (`_local`, bounded by
``MAX_HELD`` per peer) until it does (`Distribution._remote_spawn`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import zmq
from numbeam.actors._types import Down, Pid, Ref

from ._ops import (
    _EVENTS,
    _LOCAL_IDS,
    _NOBLOCK,
    _POLLIN,
    _RCVMORE,
    MAX_HELD,
    OP_BYE,
    OP_CAST_NAME,
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
    SLOT_SHIFT,
)
from ._sockets import _fast
from ._state import State, _Incoming
from ._wire import WireError

if TYPE_CHECKING:
    from numbeam.actors._runtime import Process

log = logging.getLogger("numbeam.transport")

_NO_EXTRA: list[Any] = []  # (never appended to: a message's further frames get a new list)


class Dispatch(State):
    """Receiving on the ROUTER, and running the operations of each batch."""

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


__all__ = ["Dispatch"]
