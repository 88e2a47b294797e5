"""Child specs, and how a supervisor starts and stops one child.

`Child` is OTP's child spec as a frozen dataclass, validated at construction with its defaults
written down, so a bad restart type or shutdown fails where it is written and not later, in a
supervisor, when the child first crashes. A child starts either through an async
``start_link`` classmethod (GenServer, Supervisor, DynamicSupervisor and anything shaped like
them) or, for a plain async function, with `nb.spawn_link`.

`shutdown_children` is OTP's ``shutdown/2``, for one child or many at once: monitor, send the
exit signal (``"shutdown"``, or ``"kill"`` for ``"brutal_kill"``), wait for the ``Down`` up to
the child's shutdown time, then ``"kill"``; last, unlink and flush the child's ``Exit`` so
that it does not look like a crash to the supervisor. Unlinking after the ``Down`` (as current
OTP does) rather than before keeps the child linked while we wait, so it still dies with
its supervisor if the supervisor is killed in the middle of stopping it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from numbeam.actors import (
    Down,
    Exit,
    Pid,
    StartError,
    _telemetry,
    demonitor,
    exit,
    monitor,
    receive,
    spawn_link,
    unlink,
)
from numbeam.actors._runtime import _is_async_fn, _me

from ._policy import RESTARTS, Restart, Shutdown, clean_shutdown

__all__ = [
    "Child",
    "ChildType",
    "from_wire",
    "remote_children",
    "restart_counts",
    "shutdown_children",
    "start_child_process",
    "to_wire",
]

log = logging.getLogger("numbeam")

ChildType = Literal["worker", "supervisor"]

WORKER_SHUTDOWN: Final = 5.0
"""Seconds a worker gets to stop after ``"shutdown"`` before it is killed, by default."""

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def _is_start_link_class(start: Any) -> bool:
    return isinstance(start, type) and _is_async_fn(getattr(start, "start_link", None))


@dataclass(frozen=True, slots=True)
class Child:
    """A child spec: how a supervisor starts, restarts and stops one child.

    ``nb.Child(Counter, args=(0,), id="counter")`` starts ``await Counter.start_link(0)``;
    ``nb.Child(worker_fn, args=("q",))`` starts ``nb.spawn_link(worker_fn, "q")``.

    Attributes:
        start: a class with an async ``start_link`` classmethod (a GenServer, Supervisor or
            DynamicSupervisor subclass), called as ``start.start_link(*args, **kwargs)`` and
            returning the pid; or an async function, spawned linked to the supervisor as
            ``fn(*args, **kwargs)``.
        args: positional arguments for `start`.
        kwargs: keyword arguments for `start`; kept as a read-only mapping. Default: none.
        id: the child's name within its supervisor. Default: ``start.__name__``.
        restart: ``"permanent"`` (always restarted, the default), ``"transient"`` (restarted
            only after an abnormal exit: not ``"normal"``, ``"shutdown"`` or
            ``("shutdown", term)``) or ``"temporary"`` (never restarted).
        shutdown: seconds to wait after ``nb.exit(child, "shutdown")`` before ``"kill"``;
            ``"brutal_kill"`` kills at once; ``"infinity"`` waits for as long as it takes.
            Default: 5.0 for a worker, ``"infinity"`` for a supervisor.
        type: ``"worker"`` or ``"supervisor"``. Default: ``"supervisor"`` when `start` is a
            Supervisor or DynamicSupervisor subclass, else ``"worker"``.
        node: start the child on that node (``start_link(..., node=node)``, or a remote
            ``spawn_link``). Default: this node.
        device: start the child on that device's worker (``"cuda:0"``, ``"fake:1"``);
            after the worker is restarted, the supervisor restarts the child on the new
            one. Default: none (this node).

    Raises:
        TypeError: `start` is neither kind, or a field has the wrong type.
        ValueError: `restart`, `shutdown` or `type` is not one of the values above.
    """

    start: type | Callable[..., Coroutine[Any, Any, Any]]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = field(default=None, hash=False)
    id: Hashable | None = None
    restart: Restart = "permanent"
    shutdown: Shutdown | None = None
    type: ChildType | None = None
    node: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        start = self.start
        is_class = _is_start_link_class(start)
        if not is_class and (isinstance(start, type) or not _is_async_fn(start)):
            raise TypeError(
                "nb.Child(start) needs a class with an async start_link classmethod "
                "(a GenServer, Supervisor or DynamicSupervisor subclass) or an async function "
                f"(async def), got {start!r}"
            )
        if isinstance(self.args, (str, bytes)) or not isinstance(self.args, (tuple, list)):
            raise TypeError(f"nb.Child(args=...) takes a tuple of arguments, got {self.args!r}")
        object.__setattr__(self, "args", tuple(self.args))
        kwargs = self.kwargs
        if kwargs is None:
            kwargs = _EMPTY
        elif not isinstance(kwargs, Mapping) or not all(type(k) is str for k in kwargs):
            raise TypeError(
                f"nb.Child(kwargs=...) takes a mapping of keyword arguments, got {kwargs!r}"
            )
        else:
            kwargs = MappingProxyType(dict(kwargs))
        object.__setattr__(self, "kwargs", kwargs)
        for where in ("node", "device"):
            value = getattr(self, where)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"nb.Child({where}=...) takes a name (a str), got {value!r}")
        if (self.node is not None or self.device is not None) and kwargs and not is_class:
            raise TypeError(
                "nb.Child: a function started on another node or device takes args only "
                "(its keyword arguments cannot cross), got kwargs"
            )
        if self.id is None:
            name = getattr(start, "__name__", None)
            if name is None:
                name = getattr(getattr(start, "func", None), "__name__", None)  # a partial
            object.__setattr__(self, "id", name if name is not None else type(start).__name__)
        elif not isinstance(self.id, Hashable):
            raise TypeError(f"nb.Child(id=...) must be hashable (a str, say), got {self.id!r}")
        if self.restart not in RESTARTS:
            raise ValueError(
                f"nb.Child(restart={self.restart!r}): restart must be one of {', '.join(RESTARTS)}"
            )
        child_type = self.type
        if child_type is None:
            child_type = "supervisor" if getattr(start, "_is_supervisor", False) else "worker"
            object.__setattr__(self, "type", child_type)
        elif child_type not in ("worker", "supervisor"):
            raise ValueError(
                f"nb.Child(type={child_type!r}): type must be 'worker' or 'supervisor'"
            )
        shutdown = self.shutdown
        if shutdown is None:
            shutdown = "infinity" if child_type == "supervisor" else WORKER_SHUTDOWN
        elif type(shutdown) is str:
            if shutdown not in ("brutal_kill", "infinity"):
                raise ValueError(
                    f"nb.Child(shutdown={shutdown!r}): shutdown is a number of seconds, "
                    "'brutal_kill' or 'infinity'"
                )
        elif isinstance(shutdown, bool) or not isinstance(shutdown, (int, float)):
            raise TypeError(
                "nb.Child(shutdown=...) takes a number of seconds, 'brutal_kill' or 'infinity', "
                f"got {shutdown!r}"
            )
        elif not shutdown >= 0:
            raise ValueError(f"nb.Child(shutdown={shutdown!r}): seconds must be >= 0")
        elif math.isinf(shutdown):
            shutdown = "infinity"
        else:
            shutdown = float(shutdown)
        object.__setattr__(self, "shutdown", shutdown)


def to_wire(spec: Child, main_ok: bool = False) -> dict[str, Any]:
    """`spec` as plain data, to start it from a supervisor on another node (or a device's
    worker): its `start` by module path (TypeError if the other node cannot import it)."""
    from numbeam.transport._node import _function_path

    module, qualname = _function_path(spec.start, main_ok=main_ok)
    return {
        "$child": f"{module}:{qualname}",
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs or {}),
        "id": spec.id,
        "restart": spec.restart,
        "shutdown": spec.shutdown,
        "type": spec.type,
        "node": spec.node,
        "device": spec.device,
    }


def from_wire(data: Any) -> Child:
    """A `Child` from what `to_wire` made (a Child is returned as it is)."""
    if isinstance(data, Child):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("$child"), str):
        raise TypeError(f"expected an nb.Child, got {data!r}")
    from numbeam.transport._node import import_path

    start = import_path(*data["$child"].partition(":")[::2])
    fields = {k: v for k, v in data.items() if k != "$child"}
    fields["args"] = tuple(fields.get("args", ()))
    return Child(start, **fields)


def remote_children(children: Any, node: str | None, device: str | None) -> Any:
    """`children` as plain data when the supervisor is to start on another node or a device
    (Child specs cannot cross as they are); as they are otherwise."""
    if node is None and device is None:
        return children
    from numbeam.actors._runtime import _rt

    dist = _rt().dist
    main_ok = device is not None or (dist is not None and node in dist.hidden)
    return [to_wire(c, main_ok) if isinstance(c, Child) else c for c in children]


def child_for(sup: Any, child: Child) -> Any:
    """`child` as `sup` can receive it: as it is for a supervisor of this node, as plain data
    for one on another node."""
    from numbeam.actors._runtime import _rt

    rt = _rt()
    remote = (type(sup) is Pid and sup.node != rt.node) or (
        type(sup) is tuple and len(sup) == 2 and sup[1] != rt.node
    )
    if not remote:
        return child
    node = sup.node if type(sup) is Pid else sup[1]
    return to_wire(child, main_ok=rt.dist is not None and node in rt.dist.hidden)


async def start_child_process(spec: Child) -> Pid:
    """Start `spec`'s process linked to the calling supervisor and return its pid.

    Raises:
        nb.StartError: the start failed; ``.reason`` says why (the child's init exception,
            or whatever else the start raised).
    """
    start = spec.start
    where = {}
    if spec.node is not None:
        where["node"] = spec.node
    if spec.device is not None:
        where["device"] = spec.device
    if isinstance(start, type):
        try:
            pid = await start.start_link(*spec.args, **where, **(spec.kwargs or {}))  # type: ignore[attr-defined]
        except StartError:
            raise
        except Exception as e:
            raise StartError(e, f"starting child {spec.id!r} raised {e!r}") from e
        if type(pid) is not Pid:
            raise StartError(
                ("bad_return", pid),
                f"{start.__name__}.start_link() for child {spec.id!r} returned {pid!r}, not a Pid",
            )
        return pid
    fn: Any = functools.partial(start, **spec.kwargs) if spec.kwargs else start
    return spawn_link(fn, *spec.args, **where)


# OTP's report labels, and how a log line says them.
_EVENTS: Final = {
    "child_terminated": "exited",
    "restarted": "restarted",
    "restart_delayed": "will be restarted after a backoff",
    "start_error": "failed to start",
    "shutdown_error": "did not shut down cleanly",
    "reached_max_restart_intensity": "reached its restart intensity; shutting down",
    "shutting_down": "is shutting down",
    "unexpected_message": "received an unexpected message",
}


def restart_counts() -> dict[Pid, int]:
    """Restarts made so far by each supervisor of this node, by supervisor pid (the
    observer's and the metrics' source; entries of supervisors that are gone may linger)."""
    return _me("restart_counts()").rt.extension("supervision.restarts", _new_counts)


def _new_counts(rt: Any) -> dict[Pid, int]:
    return {}


def _restarted(supervisor: Any, spec: Child, pid: Any) -> None:
    """Count a restart made by the calling supervisor; telemetry, if anyone listens."""
    me = _me("a supervisor")
    counts = me.rt.extension("supervision.restarts", _new_counts)
    counts[me.pid] = counts.get(me.pid, 0) + 1
    if _telemetry.handlers:
        _telemetry.execute(
            ("numbeam", "supervisor", "restart"),
            {"count": 1, "system_time": time.time_ns()},
            {
                "supervisor": me.pid,
                "supervisor_name": supervisor,
                "child_id": spec.id,
                "pid": pid,
                "node": me.rt.node,
            },
        )


def report(level: int, supervisor: Any, event: str, spec: Child | None, **facts: Any) -> None:
    """Log one supervisor report through the ``numbeam`` logger.

    The record carries the facts as attributes too: ``numbeam_supervisor``,
    ``numbeam_event`` (OTP's label: ``child_terminated``, ``start_error``,
    ``shutdown_error``, ``reached_max_restart_intensity``...), ``numbeam_child_id`` and one
    ``numbeam_<fact>`` per keyword.
    """
    if event == "restarted" and spec is not None:
        _restarted(supervisor, spec, facts.get("pid"))
    child = "" if spec is None else f"child {spec.id!r} "
    details = ", ".join(f"{k}={v!r}" for k, v in facts.items())
    log.log(
        level,
        "supervisor %s: %s%s%s",
        supervisor,
        child,
        _EVENTS[event],
        f" ({details})" if details else "",
        extra={
            "numbeam_supervisor": supervisor,
            "numbeam_event": event,
            "numbeam_child_id": None if spec is None else spec.id,
            **{f"numbeam_{k}": v for k, v in facts.items()},
        },
    )


async def shutdown_children(supervisor: Any, children: list[tuple[Pid, Child]]) -> None:
    """Stop `children` as OTP's ``shutdown/2`` does, all at once; return when all are gone.

    Each gets ``"shutdown"`` (``"kill"`` if its shutdown is ``"brutal_kill"``) and is killed
    when its shutdown time runs out. A child that exits with an unexpected reason is logged
    as a shutdown error. Give one child to stop children one by one, in your order.
    """
    loop = asyncio.get_running_loop()
    now = loop.time()
    # monitor ref -> (pid, spec, kill deadline or None)
    pending: dict[Any, tuple[Pid, Child, float | None]] = {}
    for pid, spec in children:
        ref = monitor(pid)
        if spec.shutdown == "brutal_kill":
            exit(pid, "kill")
            deadline = None
        else:
            exit(pid, "shutdown")
            deadline = None if spec.shutdown == "infinity" else now + spec.shutdown  # type: ignore[operator]
        pending[ref] = (pid, spec, deadline)
    try:
        while pending:
            deadlines = [d for _, _, d in pending.values() if d is not None]
            timeout = None if not deadlines else max(0.0, min(deadlines) - loop.time())
            try:
                down = await receive(
                    lambda m: type(m) is Down and m.ref in pending, timeout=timeout
                )
            except TimeoutError:
                now = loop.time()
                for ref, (pid, spec, deadline) in list(pending.items()):
                    if deadline is not None and deadline <= now:
                        exit(pid, "kill")
                        pending[ref] = (pid, spec, None)
                continue
            pid, spec, _ = pending.pop(down.ref)
            reason = await _unlink_flush(pid, down.reason)
            if not clean_shutdown(reason, spec.restart, spec.shutdown):  # type: ignore[arg-type]
                report(logging.ERROR, supervisor, "shutdown_error", spec, pid=pid, reason=reason)
    finally:
        for ref in pending:  # only if we were cancelled half-way
            demonitor(ref, flush=True)


async def _unlink_flush(pid: Pid, default: Any) -> Any:
    """Unlink a dead child and take its ``Exit`` from the mailbox: its reason, if it came."""
    unlink(pid)
    try:
        msg = await receive(lambda m: type(m) is Exit and m.pid == pid, timeout=0)
    except TimeoutError:
        return default
    return msg.reason
