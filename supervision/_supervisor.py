"""Supervisor: OTP's supervisor behaviour, a GenServer that starts, watches and restarts children.

The supervisor traps exits, so a child's death arrives as an `nb.Exit` message; it decides
what to do with the pure functions of `_policy` (restart or not, whom to restart, whether the
restart intensity is exceeded) and does it with `_child` (start a spec, OTP's ``shutdown/2``);
what it shares with `DynamicSupervisor` (checked starts, exit reports, retries) is in `_base`.
Its state is one list of child records in start order: children start in that order and
stop in reverse. An exit signal from its parent reaches `terminate` through the GenServer
machinery, which stops every child in reverse order; that is how a tree shuts down.

A restart that fails is retried as OTP does (``try_again_restart``): the supervisor casts
itself a retry and goes back to its mailbox, so API calls and a shutdown still get through,
and every retry counts as a restart, so a child that cannot start ends in the supervisor
giving up with ``"shutdown"`` once the intensity is exceeded.

The client functions are static coroutines that `nb.call` the supervisor (a pid or a
registered name) with no timeout, like OTP's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from typing import Any, NoReturn

from numbeam.actors import (
    Pid,
    StartError,
    Stop,
    TimerRef,
    call,
    cancel_timer,
    is_alive,
    is_normal_exit,
)

from ._base import SupervisorBase
from ._child import (
    Child,
    child_for,
    from_wire,
    remote_children,
    report,
    shutdown_children,
    start_child_process,
)
from ._policy import (
    Strategy,
    backoff_delay,
    check_backoff,
    check_intensity,
    check_period,
    check_strategy,
    children_to_restart,
)

__all__ = ["Supervisor"]


class _ChildRecord:
    """A child as its supervisor sees it: the spec, and its pid while it runs."""

    __slots__ = ("pid", "restarting", "spec", "started_at", "streak", "timer")

    def __init__(self, spec: Child) -> None:
        self.spec = spec
        self.pid: Pid | None = None
        self.restarting = False  # a restart failed and a retry is queued, or it is delayed
        # Restart backoff: when it last started, its exits in a row that came soon after a
        # start, and the timer of a delayed restart.
        self.started_at = 0.0
        self.streak = 0
        self.timer: TimerRef | None = None


def check_children(children: Any) -> list[Child]:
    """Validate a supervisor's child list: `Child` specs with unique ids."""
    if not isinstance(children, (list, tuple)):
        raise TypeError(f"a supervisor's children must be a list of nb.Child, got {children!r}")
    specs = list(children)
    seen: set[Hashable] = set()
    for spec in specs:
        if not isinstance(spec, Child):
            raise TypeError(
                f"a supervisor's children must be nb.Child specs, got {spec!r}; "
                "wrap it as nb.Child(start, args=..., id=...)"
            )
        if spec.id in seen:
            raise ValueError(
                f"two children have the id {spec.id!r}: give each child a unique nb.Child(id=...)"
            )
        seen.add(spec.id)
    return specs


def _check_flags(
    children: Any = (),
    *,
    strategy: Any = "one_for_one",
    intensity: Any = 3,
    period: Any = 5.0,
    backoff: Any = None,
) -> list[Child]:
    check_strategy(strategy)
    check_intensity(intensity)
    check_period(period)
    check_backoff(backoff)
    return check_children(children)


def _raise_error(sup: Any, what: str, error: tuple[Any, ...]) -> NoReturn:
    kind, reason = error[1], error[2]
    if kind == "not_found":
        raise LookupError(f"{what}: supervisor {sup!r} has no child with id {reason!r}")
    if kind == "start":
        raise StartError(reason, f"{what}: the child did not start: {reason!r}")
    raise ValueError(f"{what}: {reason}")  # running, restarting, bad_request


async def _request(sup: Pid | str, request: tuple[Any, ...], what: str) -> Any:
    """`nb.call` the supervisor with no timeout; the answer's value, or its error raised."""
    result = await call(sup, request, timeout=None)
    if result[0] == "error":
        _raise_error(sup, what, result)
    return result[1]


class Supervisor(SupervisorBase):
    """A process that starts children, restarts them as its strategy says, and stops them.

    ``sup = await nb.Supervisor.start_link(children, strategy="one_for_one", intensity=3,
    period=5.0, name=None)`` starts the children in list order, each linked to the
    supervisor, and returns once all run; it raises `nb.StartError` if one fails to start,
    after stopping the ones already started in reverse order.

    Strategies, when a child is to be restarted: ``one_for_one`` restarts that child;
    ``one_for_all`` stops all the others (reverse order) and restarts all (in order);
    ``rest_for_one`` does that to the child and the children started after it. More than
    `intensity` restarts within `period` seconds make the supervisor stop every child in
    reverse order and exit with ``"shutdown"``. When it stops for any other reason (its
    parent exits, `nb.stop`), it stops its children in reverse order too.

    The supervisor is also a valid child: ``nb.Child(nb.Supervisor, args=(children,),
    kwargs={"strategy": "one_for_all"}, id="sub")`` nests one, with shutdown
    ``"infinity"`` and type ``"supervisor"`` by default.
    """

    _flags = staticmethod(_check_flags)

    @classmethod
    def _for_remote(
        cls, args: tuple[Any, ...], node: str | None, device: str | None
    ) -> tuple[Any, ...]:
        if not args:
            return args
        return (remote_children(args[0], node, device), *args[1:])

    # -- client API --------------------------------------------------------------------------

    @classmethod
    async def start_link(  # type: ignore[override]
        cls,
        children: Sequence[Child] = (),
        *,
        strategy: Strategy = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        backoff: tuple[float, float] | None = None,
        name: str | None = None,
        node: str | None = None,
        device: str | None = None,
    ) -> Pid:
        """Start a supervisor linked to the caller and wait until all its children run.

        Args:
            children: the `nb.Child` specs, in start order; ids must be unique.
            strategy: ``"one_for_one"``, ``"one_for_all"`` or ``"rest_for_one"``.
            intensity: the most restarts (an int >= 0) allowed within `period`.
            period: the window of `intensity`, in seconds (> 0).
            backoff: None (the default: OTP's immediate restarts), or ``(initial, maximum)``
                in seconds: a child that exits again soon (within `maximum` seconds of its
                start) is restarted after ``initial``, then twice that, and so on up to
                `maximum`, per child. Only a streak's first, immediate restart counts
                against `intensity`; a delayed one does not, so a child whose node is down
                is retried every `maximum` seconds until the node is back, instead of
                exhausting the supervisor.
            name: register the supervisor under this name.
            node: start the supervisor (and so, by default, its children) on that node; its
                children's `start` must be importable there by module path.
            device: start it on that device's worker, as for `node`.

        Raises:
            TypeError, ValueError: a bad child list, strategy, intensity, period or backoff.
            nb.StartError: a child failed to start; ``.reason`` is
                ``("shutdown", ("failed_to_start_child", id, reason))``.
        """
        return await super().start_link(
            children,
            strategy=strategy,
            intensity=intensity,
            period=period,
            backoff=backoff,
            name=name,
            node=node,
            device=device,
        )

    @staticmethod
    async def which_children(sup: Pid | str) -> list[tuple[Any, Pid | None, str]]:
        """``[(id, pid or None, "worker" | "supervisor"), ...]`` in start order.

        The pid is None for a child that is not running (terminated, or being restarted).
        """
        return await call(sup, ("which_children",), timeout=None)  # type: ignore[no-any-return]

    @staticmethod
    async def count_children(sup: Pid | str) -> dict[str, int]:
        """``{"specs": n, "active": n, "supervisors": n, "workers": n}``.

        `specs` counts every child spec, `active` the children that are alive, `supervisors`
        and `workers` the specs of each type, running or not.
        """
        return await call(sup, ("count_children",), timeout=None)  # type: ignore[no-any-return]

    @staticmethod
    async def start_child(sup: Pid | str, child: Child) -> Pid:
        """Add `child` to the supervisor (last in start order), start it and return its pid.

        Raises:
            nb.StartError: ``.reason`` is ``("already_started", pid)`` or
                ``"already_present"`` when a child with that id is running or not; else
                the reason the child failed to start (its spec is then not added).
        """
        if not isinstance(child, Child):
            raise TypeError(f"Supervisor.start_child() takes an nb.Child, got {child!r}")
        pid: Pid = await _request(
            sup, ("start_child", child_for(sup, child)), "Supervisor.start_child()"
        )
        return pid

    @staticmethod
    async def terminate_child(sup: Pid | str, id: Hashable) -> None:
        """Stop the child `id` (its shutdown, as when the supervisor stops), keeping its spec.

        A temporary child's spec is deleted. Terminating a child that is not running is
        fine. The child is not restarted until `restart_child`.

        Raises:
            LookupError: no child has that id.
        """
        await _request(sup, ("terminate_child", id), "Supervisor.terminate_child()")

    @staticmethod
    async def restart_child(sup: Pid | str, id: Hashable) -> Pid:
        """Start again the terminated child `id` from its spec; return its new pid.

        Raises:
            LookupError: no child has that id.
            ValueError: the child is running (or being restarted): terminate it first.
            nb.StartError: it failed to start.
        """
        pid: Pid = await _request(sup, ("restart_child", id), "Supervisor.restart_child()")
        return pid

    @staticmethod
    async def delete_child(sup: Pid | str, id: Hashable) -> None:
        """Remove the spec of the terminated child `id`.

        Raises:
            LookupError: no child has that id.
            ValueError: the child is running (or being restarted): terminate it first.
        """
        await _request(sup, ("delete_child", id), "Supervisor.delete_child()")

    # -- the supervisor process --------------------------------------------------------------

    async def init(
        self,
        children: Sequence[Child] = (),
        *,
        strategy: Strategy = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        backoff: tuple[float, float] | None = None,
    ) -> None:
        """Start the children in order; on a failure stop them in reverse and give up."""
        children = [from_wire(c) for c in children]  # (specs sent from another node: data)
        specs = _check_flags(
            children, strategy=strategy, intensity=intensity, period=period, backoff=backoff
        )
        self._init_supervisor(intensity, period)
        self._strategy: Strategy = strategy
        self._backoff = backoff
        self._children: list[_ChildRecord] = []
        for spec in specs:
            record = _ChildRecord(spec)
            try:
                self._started(record, await start_child_process(spec))
            except StartError as e:
                report(logging.ERROR, self._name, "start_error", spec, reason=e.reason)
                await self._terminate_all()
                raise Stop(("shutdown", ("failed_to_start_child", spec.id, e.reason))) from e
            self._children.append(record)

    async def terminate(self, reason: Any) -> None:
        """Stop every child in reverse start order."""
        if not is_normal_exit(reason):
            report(logging.ERROR, self._name, "shutting_down", None, reason=reason)
        await self._terminate_all()

    async def handle_call(self, request: Any, caller: Any) -> Any:
        tag = request[0] if type(request) is tuple and request else None
        if tag == "which_children":
            return [(r.spec.id, r.pid, r.spec.type) for r in self._children]
        if tag == "count_children":
            supervisors = sum(1 for r in self._children if r.spec.type == "supervisor")
            return {
                "specs": len(self._children),
                "active": sum(1 for r in self._children if r.pid is not None and is_alive(r.pid)),
                "supervisors": supervisors,
                "workers": len(self._children) - supervisors,
            }
        if tag == "start_child" and len(request) == 2 and isinstance(request[1], dict):
            request = ("start_child", from_wire(request[1]))
        if tag == "start_child" and len(request) == 2 and isinstance(request[1], Child):
            return await self._start_new_child(request[1])
        if tag in ("terminate_child", "restart_child", "delete_child") and len(request) == 2:
            record = self._find_id(request[1])
            if record is None:
                return ("error", "not_found", request[1])
            if tag == "terminate_child":
                await self._terminate(record)
                self._child_stopped(record)
                return ("ok", None)
            if record.pid is not None or record.restarting:
                kind = "restarting" if record.restarting else "running"
                state = "being restarted" if record.restarting else f"running as {record.pid!r}"
                return (
                    "error",
                    kind,
                    f"child {record.spec.id!r} is {state}; {tag} needs a terminated child "
                    "(call Supervisor.terminate_child first)",
                )
            if tag == "delete_child":
                self._children.remove(record)
                return ("ok", None)
            try:
                self._started(record, await start_child_process(record.spec))
            except StartError as e:
                return ("error", "start", e.reason)
            return ("ok", record.pid)
        report(logging.ERROR, self._name, "unexpected_message", None, call=request)
        return ("error", "bad_request", f"unknown supervisor request {request!r}")

    # -- mechanism ---------------------------------------------------------------------------

    async def _child_exit(self, pid: Pid, reason: Any) -> None:
        record = self._find_pid(pid)
        if record is None:
            return  # a child already handled, or a stranger's link
        record.pid = None
        if not self._report_exit(record.spec, pid, reason):
            self._child_stopped(record)
        elif not self._delayed(record):
            await self._restart(record)

    async def _try_again_restart(self, key: Hashable) -> None:
        record = self._find_id(key)
        if record is not None and record.restarting:
            await self._restart(record)

    async def _backoff_restart(self, key: Hashable) -> None:
        record = self._find_id(key)
        if record is not None and record.restarting and record.timer is not None:
            record.timer = None
            await self._restart(record, counted=False)

    def _delayed(self, record: _ChildRecord, ran: bool = True) -> bool:
        """With backoff, put off the restart of `record` if its streak says so. `ran`: it
        exited after running (False: its restart failed to start it, which never ends a
        streak, however long ago it last started)."""
        if self._backoff is None:
            return False
        if ran and asyncio.get_running_loop().time() - record.started_at >= self._backoff[1]:
            record.streak = 0  # it ran long enough: a new streak
        delay = backoff_delay(record.streak, self._backoff)
        record.streak += 1
        if delay <= 0:
            return False
        record.restarting = True
        record.timer = self._delay_restart(record.spec, delay, record.spec.id)
        return True

    def _started(self, record: _ChildRecord, pid: Pid) -> None:
        record.pid = pid
        record.started_at = asyncio.get_running_loop().time()

    def _find_id(self, id: Any) -> _ChildRecord | None:
        for record in self._children:
            if record.spec.id == id:
                return record
        return None

    def _find_pid(self, pid: Pid) -> _ChildRecord | None:
        for record in self._children:
            if record.pid == pid:
                return record
        return None

    def _child_stopped(self, record: _ChildRecord) -> None:
        """OTP's del_child: a temporary child's spec goes, any other's pid is cleared."""
        record.pid = None
        record.restarting = False
        if record.timer is not None:
            cancel_timer(record.timer)
            record.timer = None
        if record.spec.restart == "temporary" and record in self._children:
            self._children.remove(record)

    async def _terminate(self, record: _ChildRecord) -> None:
        if record.pid is not None:
            await shutdown_children(self._name, [(record.pid, record.spec)])
            record.pid = None

    async def _terminate_all(self) -> None:
        for record in reversed(self._children):
            await self._terminate(record)

    async def _start_new_child(self, spec: Child) -> tuple[Any, ...]:
        existing = self._find_id(spec.id)
        if existing is not None:
            if existing.pid is not None:
                return ("error", "start", ("already_started", existing.pid))
            return ("error", "start", "already_present")
        record = _ChildRecord(spec)
        try:
            self._started(record, await start_child_process(spec))
        except StartError as e:
            return ("error", "start", e.reason)
        self._children.append(record)
        return ("ok", record.pid)

    async def _restart(self, record: _ChildRecord, counted: bool = True) -> None:
        """Restart `record` (dead or failed to restart) and whom the strategy says with it;
        `counted`: against the intensity (a restart put off by backoff is not)."""
        if counted and not self._restart_allowed(record.spec):
            self._child_stopped(record)
            raise Stop("shutdown")
        index = self._children.index(record)
        group = [
            self._children[i]
            for i in children_to_restart(self._strategy, len(self._children), index)
        ]
        # Stop the others of the group in reverse order; temporary ones are dropped, not restarted.
        for other in reversed(group):
            if other is not record:
                await self._terminate(other)
                if other.spec.restart == "temporary":
                    self._children.remove(other)
            other.restarting = False
        for other in group:
            if other not in self._children:
                continue
            try:
                self._started(other, await start_child_process(other.spec))
            except StartError as e:
                if self._delayed(other, ran=False):
                    report(logging.ERROR, self._name, "start_error", other.spec, reason=e.reason)
                    return
                other.restarting = True
                self._retry_restart(other.spec, e.reason, other.spec.id)
                return
            report(logging.INFO, self._name, "restarted", other.spec, pid=other.pid)
