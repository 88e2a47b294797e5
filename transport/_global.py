"""Cluster-wide names (``nb.global_register``), as Erlang's ``global``.

Every node holds the whole table, so `global_whereis` is a dict lookup with no round trip. Each
entry ``name -> pid`` has a single writer: the pid's own node, its *home*. Only the home adds or
removes the entries of its pids, and it tells every connected node over its ordered channel to
that node, so each node sees the changes for one pid in the order they happened: a stale "add"
can never arrive after the matching "remove". When two nodes connect, each sends the other the
entries of its own pids (never a third node's: that node tells it itself); when a node is lost,
its entries go with it, before anyone hears of the loss (`NodeDown`).

Uniqueness comes from a lock protocol over the connected nodes, as ``global:set_lock``. The
registering node locks the name first on the *boss* (the greatest node name), then on every
other node at once; each lock reply says whether that node knows the name. A node that finds the
name locked by another request refuses; the requester releases what it got and retries after a
bounded random backoff. Locking the boss first makes two racing requesters meet on one node,
where one wins outright instead of both losing and retrying. With every lock held and the name
free everywhere, the requester asks the home to add the entry; the home tells every node, each
releases its lock as the entry arrives and acknowledges to the requester, and `global_register`
returns once all have, so every node then answers `global_whereis` with the new pid. Locks of a
lost node, or of a request whose process was killed, are released.

Two nodes that registered one name while apart (a healed partition, or a node that connected
mid-protocol) both hold an entry once they meet. Every node shows the entry of the least pid
(ordered by node, id, creation), so all agree without a round trip; the loser's home drops its
entry, tells everyone, and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from numbeam.actors._runtime import _rt
from numbeam.actors._types import Pid, Ref

if TYPE_CHECKING:
    from numbeam.actors._runtime import Runtime

    from ._hooks import DistributionHooks

__all__ = [
    "GlobalNames",
    "global_register",
    "global_registered",
    "global_unregister",
    "global_whereis",
    "install",
]

log = logging.getLogger("numbeam.transport")

# Operations (codes 20-29 of the distribution layer).
OP_LOCK = 20  # [op, rid, name, round]: lock `name` for the request `rid`
OP_LOCKED = 21  # [op, rid, name, round, granted, known]: the answer; `known`: the name is taken
OP_UNLOCK = 22  # [op, rid, name]
OP_COMMIT = 23  # [op, rid, name, pid]: to the home of `pid`: add the entry, tell everyone
OP_ADD = 24  # [op, rid | None, requester | None, name, pid]: from the home of `pid`
OP_REMOVE = 25  # [op, rid | None, requester | None, name, pid]: from the home of `pid`
OP_UNREGISTER = 26  # [op, rid, name, pid]: to the home of `pid`: remove the entry, tell everyone
OP_ACK = 27  # [op, rid, ok]: an add or remove is applied; from the home, ok=False: nothing done
OP_SYNC = 28  # [op, [[name, pid], ...]]: the sender's entries for its own pids (node up)

BACKOFF_BASE = 0.002  # seconds; the n-th retry waits up to BACKOFF_BASE * 2**n, at most:
BACKOFF_MAX = 0.25


def _order(pid: Pid) -> tuple[str, int, int]:
    """The order that picks the one winner of a name clash, the same on every node."""
    return (pid.node, pid.id, pid.creation)


class _Request:
    """A `global_register` or `global_unregister` in progress on this node: who must answer."""

    __slots__ = ("asked", "fut", "granted", "home", "known", "refused", "round", "waiting")

    def __init__(self) -> None:
        self.round = 0
        self.waiting: set[str] = set()  # nodes whose answer this round still waits for
        self.asked: set[str] = set()  # nodes that may hold a lock for us: release them at the end
        self.granted: set[str] = set()
        self.refused = False
        self.known = False
        self.home: str | None = None  # the node asked to commit, while we wait on it
        self.fut: asyncio.Future[None] | None = None

    def expect(self, loop: asyncio.AbstractEventLoop, nodes: set[str]) -> asyncio.Future[None]:
        self.round += 1
        self.waiting = nodes
        self.fut = fut = loop.create_future()
        if not nodes:
            fut.set_result(None)
        return fut

    def answered(self, node: str) -> None:
        self.waiting.discard(node)
        if not self.waiting:
            self.finish()

    def finish(self) -> None:
        # `waiting` is kept: it says who never answered (and so may still hold our lock).
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)


class GlobalNames:
    """One node's replica of the global name table, its locks and its requests in progress."""

    def __init__(self, rt: Runtime, dist: DistributionHooks | None = None) -> None:
        self.rt = rt
        self.dist: DistributionHooks | None = dist if dist is not None else rt.dist
        # name -> candidate pids, least first: the first is the registered one. More than one
        # only while a clash between partitions is being resolved.
        self.entries: dict[str, list[Pid]] = {}
        self.names_of: dict[Pid, set[str]] = {}
        self.locks: dict[str, Ref] = {}  # name -> the request holding its lock on this node
        self.requests: dict[Ref, _Request] = {}
        opts = rt.options
        # A node that neither answers nor is found down within this is treated as refusing.
        self.reply_timeout = 2 * opts.heartbeat_timeout + opts.connect_timeout
        rt.exit_hooks.append(self._on_exit)
        dist = self.dist
        if dist is not None:
            for op, fn in (
                (OP_LOCK, self._on_lock),
                (OP_LOCKED, self._on_locked),
                (OP_UNLOCK, self._on_unlock),
                (OP_COMMIT, self._on_commit),
                (OP_ADD, self._on_add),
                (OP_REMOVE, self._on_remove),
                (OP_UNREGISTER, self._on_unregister),
                (OP_ACK, self._on_ack),
                (OP_SYNC, self._on_sync),
            ):
                dist.register_handler(op, fn)
            dist.node_up_hooks.append(self._on_node_up)
            dist.node_down_hooks.append(self._on_node_down)

    # -- reading ---------------------------------------------------------------------------

    def whereis(self, name: str) -> Pid | None:
        cands = self.entries.get(name)
        return cands[0] if cands else None

    def registered(self) -> list[str]:
        return list(self.entries)

    # -- register and unregister -----------------------------------------------------------

    async def register(self, name: str, pid: Pid) -> bool:
        rt = self.rt
        if pid.node == rt.node:
            if rt._lookup(pid) is None:
                raise ValueError(f"cannot register {name!r}: {pid!r} is not a live process")
        elif self.dist is None or pid.node not in self.dist.nodes():
            raise ValueError(
                f"cannot register {name!r}: {pid!r} lives on node {pid.node!r}, which this node "
                "is not connected to"
            )
        rid = Ref(rt.node)
        req = _Request()
        self.requests[rid] = req
        try:
            attempt = 0
            while True:
                if name in self.entries:
                    return False
                await self._lock_everywhere(name, rid, req)
                if req.known:
                    return False
                if not req.refused:
                    break
                self._release(name, rid, req)
                attempt += 1
                await asyncio.sleep(random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)))
            await self._commit(name, pid, rid, req)
            return True
        finally:
            del self.requests[rid]
            self._release(name, rid, req)

    async def _lock_everywhere(self, name: str, rid: Ref, req: _Request) -> None:
        """Lock `name` for `rid` on the boss, then on every other node; the outcome is in
        ``req.refused`` (someone else holds a lock) and ``req.known`` (the name is taken)."""
        req.refused = req.known = False
        me = self.rt.node
        nodes = self._nodes()
        boss = max(nodes | {me})
        if boss != me:
            await self._ask_locks(name, rid, req, {boss})
            if req.refused or req.known:
                return
            nodes = self._nodes()
        if not self._lock_here(name, rid):
            req.refused = True
            return
        req.known = name in self.entries
        if not req.known:
            await self._ask_locks(name, rid, req, nodes - {boss} - req.granted)

    async def _ask_locks(self, name: str, rid: Ref, req: _Request, nodes: set[str]) -> None:
        dist = self.dist
        if not nodes or dist is None:
            return
        fut = req.expect(self.rt._loop, set(nodes))
        for node in nodes:
            req.asked.add(node)
            dist.send_op(node, [OP_LOCK, rid, name, req.round])
        done, _ = await asyncio.wait([fut], timeout=self.reply_timeout)
        if not done:
            req.refused = True  # silent, but not (yet) found down: as good as a refusal

    async def _commit(self, name: str, pid: Pid, rid: Ref, req: _Request) -> None:
        """All locks held and the name free: have the pid's home add it; wait until every node
        we locked has it."""
        rt = self.rt
        me = rt.node
        nodes = self._nodes()
        if pid.node == me:
            fut = req.expect(rt._loop, nodes)
            # A pid that died meanwhile is not added: the name is free again at once.
            if rt._lookup(pid) is None or not self._add_own(name, pid, rid, me):
                req.finish()
        else:
            req.home = pid.node
            fut = req.expect(rt._loop, nodes | {me})
            self._send(pid.node, [OP_COMMIT, rid, name, pid])
        await asyncio.wait([fut], timeout=self.reply_timeout)
        req.asked -= nodes - req.waiting  # those that got the entry released their lock

    async def unregister(self, name: str) -> None:
        for pid in list(self.entries.get(name, ())):
            await self._unregister(name, pid)

    async def _unregister(self, name: str, pid: Pid) -> None:
        rt = self.rt
        me = rt.node
        rid = Ref(me)
        req = _Request()
        nodes = self._nodes()
        self.requests[rid] = req
        try:
            if pid.node == me:
                fut = req.expect(rt._loop, nodes)
                if not self._remove_own(name, pid, rid, me):
                    return  # gone meanwhile (its process exited): nobody will answer
            elif pid.node in nodes:
                req.home = pid.node
                fut = req.expect(rt._loop, nodes | {me})
                self._send(pid.node, [OP_UNREGISTER, rid, name, pid])
            else:
                return  # its node is gone, and the entry with it
            await asyncio.wait([fut], timeout=self.reply_timeout)
        finally:
            del self.requests[rid]

    def _lock_here(self, name: str, rid: Ref) -> bool:
        holder = self.locks.get(name)
        if holder is None or holder == rid:
            self.locks[name] = rid
            return True
        return False

    def _unlock_here(self, name: str, rid: Ref) -> None:
        if self.locks.get(name) == rid:
            del self.locks[name]

    def _release(self, name: str, rid: Ref, req: _Request) -> None:
        """Release every lock `rid` may hold; a node that already released it ignores this."""
        self._unlock_here(name, rid)
        dist = self.dist
        if dist is not None and req.asked:
            up = dist.nodes()
            for node in req.asked:
                if node in up:
                    dist.send_op(node, [OP_UNLOCK, rid, name])
        req.asked.clear()
        req.granted.clear()

    # -- the table -------------------------------------------------------------------------

    def _put(self, name: str, pid: Pid) -> bool:
        """Add an entry; True if it is new."""
        cands = self.entries.setdefault(name, [])
        if pid in cands:
            return False
        cands.append(pid)
        if len(cands) > 1:
            cands.sort(key=_order)
            log.warning(
                "node %s: global name %r is registered to %s; keeping %r",
                self.rt.node,
                name,
                " and ".join(repr(p) for p in cands),
                cands[0],
            )
        self.names_of.setdefault(pid, set()).add(name)
        return True

    def _delete(self, name: str, pid: Pid) -> bool:
        """Remove an entry; True if it was there."""
        cands = self.entries.get(name)
        if not cands or pid not in cands:
            return False
        cands.remove(pid)
        if not cands:
            del self.entries[name]
        names = self.names_of.get(pid)
        if names is not None:
            names.discard(name)
            if not names:
                del self.names_of[pid]
        return True

    def _resolve(self, name: str) -> None:
        """After a clash: drop our own pids that lost it, and tell everyone."""
        cands = self.entries.get(name)
        if cands and len(cands) > 1:
            me = self.rt.node
            for loser in [p for p in cands[1:] if p.node == me]:
                self._remove_own(name, loser, None, None)

    def _add_own(self, name: str, pid: Pid, rid: Ref | None, requester: str | None) -> bool:
        """As the home of `pid`: add its entry here and on every connected node; False if it
        was already there."""
        if rid is not None:
            self._unlock_here(name, rid)
        if not self._put(name, pid):
            return False
        self._broadcast([OP_ADD, rid, requester, name, pid])
        self._resolve(name)
        return True

    def _remove_own(self, name: str, pid: Pid, rid: Ref | None, requester: str | None) -> bool:
        """As the home of `pid`: remove its entry here and on every connected node; False if it
        was not there."""
        if not self._delete(name, pid):
            return False
        self._broadcast([OP_REMOVE, rid, requester, name, pid])
        return True

    def _nodes(self) -> set[str]:
        return set(self.dist.nodes()) if self.dist is not None else set()

    def _send(self, node: str, item: list[Any]) -> None:
        assert self.dist is not None  # only a distributed runtime has other nodes
        self.dist.send_op(node, item)

    def _broadcast(self, item: list[Any]) -> None:
        dist = self.dist
        if dist is not None:
            for node in dist.nodes():
                dist.send_op(node, item)

    def _ack(self, requester: str | None, rid: Ref | None, ok: bool) -> None:
        if requester is None or rid is None:
            return
        if requester == self.rt.node:
            req = self.requests.get(rid)
            if req is not None:
                req.answered(requester)
        elif requester in self._nodes():
            self._send(requester, [OP_ACK, rid, ok])

    # -- hooks -----------------------------------------------------------------------------

    def _on_exit(self, pid: Pid) -> None:
        names = self.names_of.get(pid)
        if names and pid.node == self.rt.node:
            try:
                for name in list(names):
                    self._remove_own(name, pid, None, None)
            except Exception:
                log.exception("node %s: could not free the global names of %r", self.rt.node, pid)

    def _on_node_up(self, node: str) -> None:
        me = self.rt.node
        own = [
            [name, pid] for pid, names in self.names_of.items() if pid.node == me for name in names
        ]
        self._send(node, [OP_SYNC, own])

    def _on_node_down(self, node: str) -> None:
        for pid in [p for p in self.names_of if p.node == node]:
            for name in list(self.names_of.get(pid, ())):
                self._delete(name, pid)
        for name, rid in list(self.locks.items()):
            if rid.node == node:
                del self.locks[name]
        for req in list(self.requests.values()):
            req.asked.discard(node)
            req.granted.discard(node)
            if req.home == node:
                req.finish()  # the entry, if it was ever added, went with its node
            elif node in req.waiting:
                req.answered(node)

    # -- operations from other nodes -------------------------------------------------------

    def _on_lock(self, src: str, item: list[Any]) -> None:
        _, rid, name, rnd = item
        _check_rid(src, rid)
        if type(name) is not str:
            raise ValueError(f"bad global name {name!r}")
        granted = self._lock_here(name, rid)
        self._send(src, [OP_LOCKED, rid, name, rnd, granted, name in self.entries])

    def _on_locked(self, src: str, item: list[Any]) -> None:
        _, rid, _, rnd, granted, known = item
        req = self.requests.get(rid)
        if req is None or rnd != req.round or src not in req.waiting:
            # A late answer: the request moved on. It released (or will release) every node it
            # asked, this one included, so there is nothing to undo.
            return
        if granted:
            req.granted.add(src)
        else:
            req.refused = True
        if known:
            req.known = True
        req.answered(src)

    def _on_unlock(self, src: str, item: list[Any]) -> None:
        _, rid, name = item
        _check_rid(src, rid)
        self._unlock_here(name, rid)

    def _on_commit(self, src: str, item: list[Any]) -> None:
        _, rid, name, pid = item
        _check_rid(src, rid)
        _check_entry(self.rt.node, name, pid)
        if self.rt._lookup(pid) is None:
            self._unlock_here(name, rid)
            self._send(src, [OP_ACK, rid, False])
            return
        self._send(src, [OP_ACK, rid, self._add_own(name, pid, rid, src)])

    def _on_unregister(self, src: str, item: list[Any]) -> None:
        _, rid, name, pid = item
        _check_rid(src, rid)
        _check_entry(self.rt.node, name, pid)
        self._send(src, [OP_ACK, rid, self._remove_own(name, pid, rid, src)])

    def _on_add(self, src: str, item: list[Any]) -> None:
        _, rid, requester, name, pid = item
        _check_entry(src, name, pid)
        self._put(name, pid)
        self._resolve(name)
        if rid is not None:
            self._unlock_here(name, rid)
        self._ack(requester, rid, True)

    def _on_remove(self, src: str, item: list[Any]) -> None:
        _, rid, requester, name, pid = item
        _check_entry(src, name, pid)
        self._delete(name, pid)
        self._ack(requester, rid, True)

    def _on_ack(self, src: str, item: list[Any]) -> None:
        _, rid, ok = item
        req = self.requests.get(rid)
        if req is None:
            return
        if req.home == src:
            req.home = None
            if not ok:  # nothing was added or removed: nobody else will answer
                req.finish()
                return
        req.answered(src)

    def _on_sync(self, src: str, item: list[Any]) -> None:
        _, entries = item
        if type(entries) is not list:
            raise ValueError("bad global name sync")
        new = set()
        for entry in entries:
            if type(entry) is not list or len(entry) != 2:
                raise ValueError(f"bad global name entry {entry!r}")
            _check_entry(src, entry[0], entry[1])
            new.add((entry[0], entry[1]))
        # The sender's view of its own pids replaces whatever we had of them.
        for pid in [p for p in self.names_of if p.node == src]:
            for name in list(self.names_of.get(pid, ())):
                if (name, pid) not in new:
                    self._delete(name, pid)
        for name, pid in new:
            self._put(name, pid)
            self._resolve(name)


def _check_rid(src: str, rid: Any) -> None:
    if type(rid) is not Ref or rid.node != src:
        raise ValueError(f"bad request id {rid!r} from {src}")


def _check_entry(home: str, name: Any, pid: Any) -> None:
    if type(name) is not str or type(pid) is not Pid:
        raise ValueError(f"bad global name entry {name!r} -> {pid!r}")
    if pid.node != home:
        raise ValueError(f"an entry for {pid!r} must come from its own node, not {home}")


# ---- installing and the public functions ---------------------------------------------------


def install(rt: Runtime, dist: DistributionHooks | None = None) -> GlobalNames:
    """Give the runtime `rt` its global name table, hooked into `dist` (default ``rt.dist``).

    The distribution layer calls it when it is created, before any connection can come up, so
    no node-up is missed. A local runtime needs no call: the first use installs it.
    """
    ext = rt.extensions["global_names"] = GlobalNames(rt, dist)
    return ext


def _table() -> GlobalNames:
    return _rt().extension("global_names", GlobalNames)


def _check_name(name: Any, what: str) -> None:
    if type(name) is not str or not name:
        raise TypeError(f"{what} takes a non-empty str name, got {name!r}")


async def global_register(name: str, pid: Pid) -> bool:
    """Register `pid` under `name` on every connected node; True if it is now registered,
    False if the name is taken anywhere in the cluster.

    Two nodes racing for one name get exactly one winner. The call returns once every node it
    locked knows the name, so `global_whereis` there answers `pid`. The name is freed when the
    process exits or its node is lost, so a pid of another node that has already exited gets
    True and leaves the name free. A pid may hold several names. An unresponsive node delays
    the answer until it is found down (heartbeats): wrap the call in a timeout if that matters.

    Raises:
        TypeError: `name` is not a non-empty str, or `pid` is not a Pid.
        ValueError: `pid` is a dead process of this node, or lives on a node that this node is
            not connected to.
    """
    _check_name(name, "nb.global_register()")
    if type(pid) is not Pid:
        raise TypeError(f"nb.global_register() takes a Pid to register, got {pid!r}")
    return await _table().register(name, pid)


async def global_unregister(name: str) -> None:
    """Remove the global name `name` on every connected node; nothing happens if it is not
    registered. Returns once every node has removed it."""
    _check_name(name, "nb.global_unregister()")
    await _table().unregister(name)


def global_whereis(name: str) -> Pid | None:
    """The pid registered globally as `name` (this node's replica: no round trip), or None."""
    _check_name(name, "nb.global_whereis()")
    return _table().whereis(name)


def global_registered() -> list[str]:
    """All globally registered names (this node's replica)."""
    return _table().registered()
