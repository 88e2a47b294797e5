"""Process groups (``nb.pg``), as Erlang's ``pg`` (OTP 23+): named groups of processes across
the cluster, eventually consistent.

Each node is the only writer of its own processes' memberships. `join` and `leave` change this
node's view at once and tell every connected node, over the ordered channel to each; a node that
connects is sent this node's memberships (and sends its own); a node that is lost takes its
members with it, before anyone hears of the loss (`NodeDown`); a process that exits leaves all
its groups. There is no lock and no round trip, so `members` answers from this node's view,
which lags the others' by the time a message takes. As in Erlang, a process may join a group
several times and then must leave it as many times.

`monitor(group)` reports every change of this node's view of a group as `Join` and `Leave`
messages to the caller (OTP 25's ``pg:monitor/1``): the way to wait for a membership to
converge without sleeping.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from numbeam.actors._runtime import _me, _rt
from numbeam.actors._types import Pid, Ref

if TYPE_CHECKING:
    from numbeam.actors._runtime import Runtime

    from ._hooks import DistributionHooks

__all__ = [
    "Join",
    "Leave",
    "ProcessGroups",
    "demonitor",
    "install",
    "join",
    "leave",
    "local_members",
    "members",
    "monitor",
    "which_groups",
]

log = logging.getLogger("numbeam.transport")

# Operations (codes 30-39 of the distribution layer), always about the sender's own processes.
OP_JOIN = 30  # [op, group, [pid, ...]]
OP_LEAVE = 31  # [op, group, [pid, ...]]
OP_SYNC = 32  # [op, [[group, [pid, ...]], ...]]: all the sender's memberships (node up)

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgpack can carry


@dataclass(frozen=True, slots=True)
class Join:
    """Delivered to a `monitor` of `group` when `pids` joined it (on any node)."""

    ref: Ref
    group: Hashable
    pids: list[Pid]


@dataclass(frozen=True, slots=True)
class Leave:
    """Delivered to a `monitor` of `group` when `pids` left it: by `leave`, by exiting, or
    because their node was lost."""

    ref: Ref
    group: Hashable
    pids: list[Pid]


class ProcessGroups:
    """One node's view of every process group, and the monitors of its processes."""

    def __init__(self, rt: Runtime, dist: DistributionHooks | None = None) -> None:
        self.rt = rt
        self.dist: DistributionHooks | None = dist if dist is not None else rt.dist
        self.local: dict[Hashable, list[Pid]] = {}  # this node's members, repeats included
        self.remote: dict[str, dict[Hashable, list[Pid]]] = {}  # node -> its members
        self.joined: dict[Pid, list[Hashable]] = {}  # local pid -> its groups, repeats included
        self.watchers: dict[Hashable, dict[Ref, Pid]] = {}  # group -> monitor ref -> watcher
        self.watched: dict[Ref, Hashable] = {}
        self.refs_of: dict[Pid, set[Ref]] = {}  # watcher -> its monitor refs
        rt.exit_hooks.append(self._on_exit)
        dist = self.dist
        if dist is not None:
            dist.register_handler(OP_JOIN, self._on_join)
            dist.register_handler(OP_LEAVE, self._on_leave)
            dist.register_handler(OP_SYNC, self._on_sync)
            dist.node_up_hooks.append(self._on_node_up)
            dist.node_down_hooks.append(self._on_node_down)

    # -- reading ---------------------------------------------------------------------------

    def members(self, group: Hashable) -> list[Pid]:
        pids = list(self.local.get(group, ()))
        for groups in self.remote.values():
            pids += groups.get(group, ())
        return pids

    def which_groups(self) -> list[Hashable]:
        groups = dict.fromkeys(self.local)
        for node_groups in self.remote.values():
            groups.update(dict.fromkeys(node_groups))
        return list(groups)

    # -- local changes ---------------------------------------------------------------------

    def join(self, group: Hashable, pids: list[Pid]) -> None:
        if not pids:
            return
        self.local.setdefault(group, []).extend(pids)
        for pid in pids:
            self.joined.setdefault(pid, []).append(group)
        self._broadcast([OP_JOIN, group, pids])
        self._notify(Join, group, pids)

    def leave(self, group: Hashable, pids: list[Pid]) -> bool:
        members = self.local.get(group)
        left = []
        for pid in pids:
            if members and pid in members:
                members.remove(pid)
                groups = self.joined[pid]
                groups.remove(group)
                if not groups:
                    del self.joined[pid]
                left.append(pid)
        if members is not None and not members:
            del self.local[group]
        if not left:
            return False
        self._broadcast([OP_LEAVE, group, left])
        self._notify(Leave, group, left)
        return True

    def monitor(self, watcher: Pid, group: Hashable) -> tuple[Ref, list[Pid]]:
        ref = Ref(self.rt.node)
        self.watchers.setdefault(group, {})[ref] = watcher
        self.watched[ref] = group
        self.refs_of.setdefault(watcher, set()).add(ref)
        return ref, self.members(group)

    def demonitor(self, ref: Ref) -> bool:
        group = self.watched.pop(ref, None)
        if group is None:
            return False
        refs = self.watchers[group]
        watcher = refs.pop(ref)
        if not refs:
            del self.watchers[group]
        mine = self.refs_of[watcher]
        mine.discard(ref)
        if not mine:
            del self.refs_of[watcher]
        return True

    def _broadcast(self, item: list[Any]) -> None:
        dist = self.dist
        if dist is not None:
            for node in dist.nodes():
                dist.send_op(node, item)

    def _notify(self, kind: type[Join] | type[Leave], group: Hashable, pids: list[Pid]) -> None:
        refs = self.watchers.get(group)
        if not refs:
            return
        rt = self.rt
        for ref, watcher in list(refs.items()):
            proc = rt._lookup(watcher)
            if proc is not None:
                rt._deliver(proc, kind(ref, group, list(pids)))

    # -- hooks -----------------------------------------------------------------------------

    def _on_exit(self, pid: Pid) -> None:
        try:
            groups = self.joined.get(pid)
            if groups:
                for group, n in Counter(groups).items():
                    self.leave(group, [pid] * n)
            for ref in list(self.refs_of.get(pid, ())):
                self.demonitor(ref)
        except Exception:
            log.exception("node %s: could not remove %r from its process groups", self.rt.node, pid)

    def _on_node_up(self, node: str) -> None:
        assert self.dist is not None
        self.dist.send_op(node, [OP_SYNC, [[g, pids] for g, pids in self.local.items()]])

    def _on_node_down(self, node: str) -> None:
        for group, pids in self.remote.pop(node, {}).items():
            self._notify(Leave, group, pids)

    # -- operations from other nodes -------------------------------------------------------

    def _on_join(self, src: str, item: list[Any]) -> None:
        _, group, pids = item
        _check_remote(src, group, pids)
        if pids:
            self.remote.setdefault(src, {}).setdefault(group, []).extend(pids)
            self._notify(Join, group, pids)

    def _on_leave(self, src: str, item: list[Any]) -> None:
        _, group, pids = item
        _check_remote(src, group, pids)
        groups = self.remote.get(src, {})
        members = groups.get(group)
        if not members:
            return
        left = []
        for pid in pids:
            if pid in members:
                members.remove(pid)
                left.append(pid)
        if not members:
            del groups[group]
        if left:
            self._notify(Leave, group, left)

    def _on_sync(self, src: str, item: list[Any]) -> None:
        _, entries = item
        if type(entries) is not list:
            raise ValueError("bad process group sync")
        new: dict[Hashable, list[Pid]] = {}
        for entry in entries:
            if type(entry) is not list or len(entry) != 2:
                raise ValueError(f"bad process group entry {entry!r}")
            _check_remote(src, entry[0], entry[1])
            new.setdefault(entry[0], []).extend(entry[1])
        # The sender's memberships replace what we had of them; monitors see the difference.
        old = self.remote.get(src, {})
        self.remote[src] = {g: pids for g, pids in new.items() if pids}
        for group in dict.fromkeys([*old, *new]):
            before, after = Counter(old.get(group, ())), Counter(new.get(group, ()))
            left = list((before - after).elements())
            joined = list((after - before).elements())
            if left:
                self._notify(Leave, group, left)
            if joined:
                self._notify(Join, group, joined)


def _check_remote(src: str, group: Any, pids: Any) -> None:
    try:
        _check_group(group)
    except TypeError as e:
        raise ValueError(str(e)) from None
    if type(pids) is not list or any(type(p) is not Pid or p.node != src for p in pids):
        raise ValueError(f"process group members from {src} must be its own pids, got {pids!r}")


def _check_group(group: Any) -> None:
    """TypeError unless `group` is hashable and can cross to another node."""
    t = type(group)
    if t is tuple or t is frozenset:
        for item in group:
            _check_group(item)
    elif t is int:
        if not _INT_MIN <= group <= _INT_MAX:
            raise TypeError(f"a process group int must fit in 64 bits, got {group!r}")
    elif t not in (str, bytes, float, bool, type(None), Pid, Ref):
        raise TypeError(
            f"a process group must be a str, bytes, number, bool, None, Pid, Ref, or a tuple "
            f"or frozenset of those (hashable, and able to cross to another node), got "
            f"{t.__qualname__} {group!r}"
        )


# ---- installing and the public functions ---------------------------------------------------


def install(rt: Runtime, dist: DistributionHooks | None = None) -> ProcessGroups:
    """Give the runtime `rt` its process groups, hooked into `dist` (default ``rt.dist``).

    The distribution layer calls it when it is created, before any connection can come up, so
    no node-up is missed. A local runtime needs no call: the first use installs it.
    """
    ext = rt.extensions["process_groups"] = ProcessGroups(rt, dist)
    return ext


def _groups() -> ProcessGroups:
    return _rt().extension("process_groups", ProcessGroups)


def _local_pids(pid_or_pids: Any, what: str, alive: bool) -> list[Pid]:
    pids: list[Any]
    if type(pid_or_pids) is Pid:
        pids = [pid_or_pids]
    elif isinstance(pid_or_pids, (list, tuple)):
        pids = list(pid_or_pids)
    else:
        raise TypeError(f"{what} takes a Pid or a list of Pids, got {pid_or_pids!r}")
    rt = _rt()
    for pid in pids:
        if type(pid) is not Pid:
            raise TypeError(f"{what} takes a Pid or a list of Pids, got {pid!r} in the list")
        if pid.node != rt.node:
            raise ValueError(f"{what} takes only processes of this node; {pid!r} is remote")
        if alive and rt._lookup(pid) is None:
            raise ValueError(f"{what}: {pid!r} is not a live process")
    return pids


def join(group: Hashable, pid_or_pids: Pid | list[Pid]) -> None:
    """Add a process (or each of a list) of this node to `group`, here and on every node.

    A process may join a group several times (and must leave it as many times); it leaves all
    its groups when it exits.

    Raises:
        TypeError: `group` is not hashable or cannot cross to another node (str, bytes,
            numbers, bool, None, Pid, Ref and tuples of those can), or a pid is not a Pid.
        ValueError: a pid is remote or not alive. Nothing joined then.
    """
    _check_group(group)
    pids = _local_pids(pid_or_pids, "nb.pg.join()", alive=True)
    _groups().join(group, pids)


def leave(group: Hashable, pid_or_pids: Pid | list[Pid]) -> bool:
    """Remove one membership of a process (or of each of a list) of this node from `group`.

    Returns False if none of them was a member.

    Raises:
        TypeError: as for `join`.
        ValueError: a pid is remote.
    """
    _check_group(group)
    pids = _local_pids(pid_or_pids, "nb.pg.leave()", alive=False)
    return _groups().leave(group, pids)


def members(group: Hashable) -> list[Pid]:
    """The members of `group` on every node, as this node sees them (repeats included)."""
    return _groups().members(group)


def local_members(group: Hashable) -> list[Pid]:
    """The members of `group` that live on this node (repeats included)."""
    return list(_groups().local.get(group, ()))


def which_groups() -> list[Hashable]:
    """Every group with at least one member, as this node sees them."""
    return _groups().which_groups()


def monitor(group: Hashable) -> tuple[Ref, list[Pid]]:
    """Watch `group` from the calling process: returns ``(ref, current members)``, then every
    change of this node's view arrives as ``nb.pg.Join(ref, group, pids)`` or
    ``nb.pg.Leave(ref, group, pids)``, until `demonitor` or the caller exits."""
    me = _me("nb.pg.monitor()")
    _check_group(group)
    return _groups().monitor(me.pid, group)


def demonitor(ref: Ref) -> bool:
    """Stop the group monitor `ref`; False if it was not active. Notifications already in the
    mailbox stay there."""
    if not isinstance(ref, Ref):
        raise TypeError(
            f"nb.pg.demonitor() takes the Ref that nb.pg.monitor() returned, got {ref!r}"
        )
    return _groups().demonitor(ref)
