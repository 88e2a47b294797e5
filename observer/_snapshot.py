"""What the observer shows, gathered where it lives: each node describes itself in a plain
dict (str keys, lists, numbers, str: it crosses nodes as msgpack and the page gets it as
JSON), and the node that serves the page asks every node of the cluster for one.

Everything here that talks to other processes (supervisors' ``which_children``, other
nodes) runs inside a numbeam process: `in_process` runs a coroutine function as a short-lived
process for code that is not one (the web server's request handlers).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from numbeam.actors._runtime import _PENDING, Process, Runtime, _current_function, _rt
from numbeam.supervision._base import SupervisorBase
from numbeam.supervision._child import restart_counts

import numbeam as nb

__all__ = [
    "MAX_PROCESSES",
    "cluster_snapshot",
    "in_process",
    "kill",
    "node_snapshot",
    "process_details",
]

MAX_PROCESSES = 1000
"""A node lists at most this many processes (the longest mailboxes first); `process_count`
says how many there are."""

ANSWER_TIMEOUT = 2.0  # seconds a node (or a supervisor) has to answer the observer

_TAG = "$numbeam_observer"


def _status(proc: Process) -> str:
    """As `nb.process_info` says it (the snapshot's own process is never listed)."""
    if proc.kill_reason is not None:
        return "exiting"
    return "waiting" if proc.state == _PENDING else "runnable"


def _row(proc: Process, restarts: dict[nb.Pid, int]) -> dict[str, Any]:
    fn = proc.fn
    is_sup = isinstance(fn, type) and issubclass(fn, SupervisorBase)
    return {
        "pid": repr(proc.pid),
        "id": proc.pid.id,
        "creation": proc.pid.creation,
        "name": proc.name,
        "function": getattr(fn, "__qualname__", None) or repr(fn),
        "current_function": _current_function(proc),
        "status": _status(proc),
        "message_queue_len": len(proc.mailbox) if proc.mailbox else 0,
        "messages_in": proc.msgs_in,
        "messages_out": proc.msgs_out,
        "links": len(proc.links) if proc.links else 0,
        "trap_exit": proc.trap,
        "supervisor": is_sup,
        "restarts": restarts.get(proc.pid, 0) if is_sup else None,
    }


def message_totals(rt: Runtime) -> tuple[int, int]:
    """Messages received and sent on this node so far (exited processes included)."""
    got, sent = rt.msgs_in_exited, rt.msgs_out_exited
    for p in rt._procs.values():
        got += p.msgs_in
        sent += p.msgs_out
    return got, sent


async def _tree(proc: Process) -> dict[str, Any]:
    """One supervisor's children, from its ``which_children`` (bounded by ANSWER_TIMEOUT)."""
    try:
        children = await nb.call(proc.pid, ("which_children",), timeout=ANSWER_TIMEOUT)
    except (TimeoutError, nb.CallError, nb.NoProc) as e:
        return {"pid": repr(proc.pid), "error": f"no answer: {type(e).__name__}"}
    return {
        "pid": repr(proc.pid),
        "children": [
            {"id": repr(cid), "pid": None if pid is None else repr(pid), "type": kind}
            for cid, pid, kind in children
        ],
    }


async def node_snapshot() -> dict[str, Any]:
    """This node, described: processes, supervision trees, tensor memory, device workers.
    Runs inside a process (it calls the supervisors)."""
    rt = _rt()
    me = nb.self()
    counting = rt.counting
    rt.count_messages()  # looked at: count from now on (see the node option process_counters)
    restarts = restart_counts()
    for pid in [p for p in restarts if not nb.is_alive(p)]:
        del restarts[pid]  # supervisors that are gone
    procs = [p for p in list(rt._procs.values()) if p.pid != me]
    procs.sort(key=lambda p: (-(len(p.mailbox) if p.mailbox else 0), p.pid.id))
    rows = [_row(p, restarts) for p in procs[:MAX_PROCESSES]]
    sups = [p for p in procs if isinstance(p.fn, type) and issubclass(p.fn, SupervisorBase)]
    trees = [await _tree(p) for p in sups]  # one by one: this process receives each answer
    for tree, p in zip(trees, sups, strict=True):
        tree["name"] = p.name
        tree["function"] = p.fn.__qualname__
        tree["restarts"] = restarts.get(p.pid, 0)
    stats = rt.statistics()
    got, sent = message_totals(rt)
    return {
        "node": rt.node,
        "device": nb.device(),  # "cpu", or the device of the worker this node is
        "hidden": rt.options.hidden,
        "nodes": sorted(nb.nodes()),
        "process_count": len(procs),
        "run_queue": stats["run_queue"],
        "registered": stats["registered"],
        "timers": stats["timers"],
        "counting": counting,  # False on a first look: counting starts now
        "messages_in": got,
        "messages_out": sent,
        "message_queue_total": sum(len(p.mailbox) for p in procs if p.mailbox),
        "processes": rows,
        "supervisors": list(trees),
        "tensors": _plain(nb.tensors.stats()),
        "devices": list(rt.devices),
        "workers": _plain(nb.gpu.workers()),
    }


def _plain(value: Any) -> Any:
    """`value` with what msgpack and JSON cannot carry turned into text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def _find(rt: Runtime, pid_id: int, creation: int) -> Process | None:
    proc = rt._procs.get(pid_id)
    if proc is None or proc.pid.creation != creation:
        return None
    return proc


def local_process_details(pid_id: int, creation: int) -> dict[str, Any] | None:
    """`nb.process_info` of a process of this node, as text and numbers."""
    rt = _rt()
    proc = _find(rt, pid_id, creation)
    if proc is None:
        return None
    info = nb.process_info(proc.pid)
    if info is None:
        return None
    out = _plain(info)
    out["pid"] = repr(proc.pid)
    out["node"] = rt.node
    return out  # type: ignore[no-any-return]


# -- across nodes ---------------------------------------------------------------------------


async def remote_snapshot(reply_to: nb.Pid, ref: str) -> None:
    """Spawned on a node by the observer: send it this node's snapshot."""
    nb.send(reply_to, (_TAG, ref, await node_snapshot()))


async def remote_process_details(reply_to: nb.Pid, ref: str, pid_id: int, creation: int) -> None:
    nb.send(reply_to, (_TAG, ref, local_process_details(pid_id, creation)))


async def remote_kill(reply_to: nb.Pid, ref: str, pid_id: int, creation: int) -> None:
    nb.send(reply_to, (_TAG, ref, _kill_local(pid_id, creation)))


def _kill_local(pid_id: int, creation: int) -> bool:
    proc = _find(_rt(), pid_id, creation)
    if proc is None:
        return False
    nb.exit(proc.pid, "kill")
    return True


async def _ask_many(asks: list[tuple[str, str, tuple[Any, ...]]]) -> list[Any]:
    """Spawn ``fn(reply_to, ref, *args)`` on each ``(node, fn, args)`` at once and gather
    the answers, in order; where a node fails or does not answer within ANSWER_TIMEOUT, a
    RuntimeError stands in its place. (One process receives them all: no tasks.)"""
    me = nb.self()
    answers: list[Any] = [None] * len(asks)
    by_ref: dict[str, tuple[int, nb.Ref]] = {}  # our ref -> (index, monitor ref)
    by_mref: dict[nb.Ref, str] = {}
    for i, (node, fn, args) in enumerate(asks):
        ref = secrets.token_hex(8)
        try:
            _, mref = nb.spawn_monitor(f"{__name__}:{fn}", me, ref, *args, node=node)
        except (RuntimeError, ValueError) as e:
            answers[i] = RuntimeError(f"node {node}: {e}")
            continue
        by_ref[ref] = (i, mref)
        by_mref[mref] = ref
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ANSWER_TIMEOUT
    while by_ref:
        try:
            msg = await nb.receive(
                lambda m: (
                    (type(m) is tuple and len(m) == 3 and m[0] == _TAG and m[1] in by_ref)
                    or (type(m) is nb.Down and m.ref in by_mref)
                ),
                timeout=max(0.0, deadline - loop.time()),
            )
        except TimeoutError:
            for i, mref in by_ref.values():
                nb.demonitor(mref, flush=True)
                answers[i] = RuntimeError(f"node {asks[i][0]} did not answer in time")
            break
        if type(msg) is nb.Down:
            i, _ = by_ref.pop(by_mref.pop(msg.ref))
            answers[i] = RuntimeError(f"node {asks[i][0]} did not answer: {msg.reason!r}")
            continue
        i, mref = by_ref.pop(msg[1])
        del by_mref[mref]
        nb.demonitor(mref, flush=True)
        answers[i] = msg[2]
    return answers


async def _ask(node: str, fn: str, *args: Any) -> Any:
    [answer] = await _ask_many([(node, fn, args)])
    if isinstance(answer, RuntimeError):
        raise answer
    return answer


async def cluster_snapshot(seeds: list[str] | None = None) -> dict[str, Any]:
    """Every node of the cluster, described (runs in a process): this node unless it is
    hidden, the nodes it is connected to, the `seeds`, and every node those list, in turn."""
    rt = _rt()
    found: dict[str, dict[str, Any]] = {}
    workers: set[str] = set()
    if not rt.options.hidden:
        found[rt.node] = mine = await node_snapshot()
        # This node's device workers are nodes too (hidden ones: nb.nodes() leaves them out).
        workers = {w["node"] for w in mine["workers"].values() if w["status"] == "running"}
    todo = sorted({*nb.nodes(), *(seeds or ()), *workers} - set(found) - {rt.node})
    for _ in range(4):  # nodes that the answers name, a few rounds deep
        if not todo:
            break
        answers = await _ask_many([(n, "remote_snapshot", ()) for n in todo])
        for n, snap in zip(todo, answers, strict=True):
            found[n] = snap if isinstance(snap, dict) else {"node": n, "error": str(snap)}
        named = {m for snap in found.values() for m in snap.get("nodes", ())}
        todo = sorted(named - set(found) - {rt.node})
    return {"observer": rt.node, "nodes": [found[n] for n in sorted(found)]}


async def process_details(node: str, pid_id: int, creation: int) -> dict[str, Any] | None:
    """`process_info` of a process of any node (runs in a process)."""
    if node == _rt().node:
        return local_process_details(pid_id, creation)
    return await _ask(node, "remote_process_details", pid_id, creation)  # type: ignore[no-any-return]


async def kill(node: str, pid_id: int, creation: int) -> bool:
    """Send ``exit(pid, "kill")`` to a process of any node; False if it was not there."""
    if node == _rt().node:
        return _kill_local(pid_id, creation)
    return await _ask(node, "remote_kill", pid_id, creation)  # type: ignore[no-any-return]


async def in_process(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``await fn(*args)`` as a process of this node and return (or raise) its result;
    for code that is not a process (a web request handler)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    async def runner() -> None:
        try:
            result = await fn(*args)
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
            return
        if not fut.done():
            fut.set_result(result)

    pid = nb.spawn(runner)
    try:
        return await fut
    finally:
        if not fut.done():  # the request went away: so does the process
            rt = _rt()
            proc = rt._lookup(pid)
            if proc is not None:
                rt._kill(proc, "killed")
