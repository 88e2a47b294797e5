"""DynamicSupervisor: Elixir's supervisor of children started on demand, all one_for_one.

It starts with no children; `start_child` adds one at a time and returns its pid, which is
also how the child is named afterwards (`terminate_child` takes the pid, as in Elixir).
Children are independent, so the strategy is always one_for_one and the state is just a map
from pid to spec (in start order) plus the specs whose restart failed and waits for a retry.
Restart decisions and intensity use the same pure functions and machinery (`_base`) as
`Supervisor`. On termination all children are asked to stop at once and each gets its own
shutdown time, as Elixir does, since none of them depends on another.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

from numbeam.actors import Pid, Ref, StartError, Stop, call, is_alive, is_normal_exit, make_ref

from ._base import SupervisorBase
from ._child import Child, child_for, from_wire, report, shutdown_children, start_child_process
from ._policy import check_intensity, check_max_children, check_period

__all__ = ["DynamicSupervisor"]


def _check_flags(
    *, max_children: Any = None, intensity: Any = 3, period: Any = 5.0
) -> tuple[int | None, int, float]:
    check_max_children(max_children)
    check_intensity(intensity)
    check_period(period)
    return max_children, intensity, float(period)


class DynamicSupervisor(SupervisorBase):
    """A supervisor that starts with no children and gets them one by one, at run time.

    ``dyn = await nb.DynamicSupervisor.start_link(max_children=None, intensity=3,
    period=5.0, name=None)``; then ``pid = await nb.DynamicSupervisor.start_child(dyn,
    nb.Child(...))``. Each child is restarted on its own as its restart type says
    (one_for_one); more than `intensity` restarts within `period` seconds make the
    supervisor stop all children and exit with ``"shutdown"``. When it stops, it stops all
    its children at once, each within its own shutdown time.
    """

    _flags = staticmethod(_check_flags)

    # -- client API --------------------------------------------------------------------------

    @classmethod
    async def start_link(  # type: ignore[override]
        cls,
        *,
        max_children: int | None = None,
        intensity: int = 3,
        period: float = 5.0,
        name: str | None = None,
        node: str | None = None,
        device: str | None = None,
    ) -> Pid:
        """Start a dynamic supervisor linked to the caller.

        Args:
            max_children: the most children it holds at once (None: no limit).
            intensity: the most restarts (an int >= 0) allowed within `period`.
            period: the window of `intensity`, in seconds (> 0).
            name: register the supervisor under this name.
            node: start it on that node; device: on that device's worker.

        Raises:
            TypeError, ValueError: a bad max_children, intensity or period.
        """
        return await super().start_link(
            max_children=max_children,
            intensity=intensity,
            period=period,
            name=name,
            node=node,
            device=device,
        )

    @staticmethod
    async def start_child(dyn: Pid | str, child: Child) -> Pid:
        """Start `child` under the supervisor and return its pid.

        Raises:
            nb.StartError: ``.reason`` is ``"max_children"`` when the supervisor is full;
                else the reason the child failed to start.
        """
        if not isinstance(child, Child):
            raise TypeError(f"DynamicSupervisor.start_child() takes an nb.Child, got {child!r}")
        result = await call(dyn, ("start_child", child_for(dyn, child)), timeout=None)
        if result[0] == "error":
            if result[1] == "max_children":
                raise StartError(
                    "max_children",
                    f"DynamicSupervisor.start_child(): {dyn!r} already has max_children="
                    f"{result[2]} children",
                )
            reason = result[2]
            raise StartError(
                reason, f"DynamicSupervisor.start_child(): the child did not start: {reason!r}"
            )
        return result[1]  # type: ignore[no-any-return]

    @staticmethod
    async def terminate_child(dyn: Pid | str, pid: Pid) -> None:
        """Stop the child `pid` (its shutdown) and forget it; it is not restarted.

        Raises:
            LookupError: `pid` is not a child of this supervisor.
        """
        if type(pid) is not Pid:
            raise TypeError(f"DynamicSupervisor.terminate_child() takes a child's Pid, got {pid!r}")
        result = await call(dyn, ("terminate_child", pid), timeout=None)
        if result[0] == "error":
            raise LookupError(
                f"DynamicSupervisor.terminate_child(): {pid!r} is not a child of {dyn!r}"
            )

    @staticmethod
    async def which_children(dyn: Pid | str) -> list[tuple[None, Pid | None, str]]:
        """``[(None, pid or None, "worker" | "supervisor"), ...]``: dynamic children have no
        id, as in OTP; the pid is None for a child whose restart failed and is retried."""
        return await call(dyn, ("which_children",), timeout=None)  # type: ignore[no-any-return]

    @staticmethod
    async def count_children(dyn: Pid | str) -> dict[str, int]:
        """``{"specs": n, "active": n, "supervisors": n, "workers": n}``, as `Supervisor`'s."""
        return await call(dyn, ("count_children",), timeout=None)  # type: ignore[no-any-return]

    # -- the supervisor process --------------------------------------------------------------

    async def init(
        self, *, max_children: int | None = None, intensity: int = 3, period: float = 5.0
    ) -> None:
        """Trap exits and start empty."""
        self._max_children, intensity, period = _check_flags(
            max_children=max_children, intensity=intensity, period=period
        )
        self._init_supervisor(intensity, period)
        self._children: dict[Pid, Child] = {}  # running children, in start order
        self._restarting: dict[Ref, Child] = {}  # children whose restart failed, to retry

    async def terminate(self, reason: Any) -> None:
        """Stop all children at once, each within its shutdown time."""
        if not is_normal_exit(reason):
            report(logging.ERROR, self._name, "shutting_down", None, reason=reason)
        children = list(reversed(self._children.items()))
        self._children.clear()
        self._restarting.clear()
        await shutdown_children(self._name, children)

    async def handle_call(self, request: Any, caller: Any) -> Any:
        tag = request[0] if type(request) is tuple and request else None
        if tag == "start_child" and len(request) == 2 and isinstance(request[1], dict):
            request = ("start_child", from_wire(request[1]))
        if tag == "start_child" and len(request) == 2 and isinstance(request[1], Child):
            spec = request[1]
            limit = self._max_children
            if limit is not None and len(self._children) + len(self._restarting) >= limit:
                return ("error", "max_children", limit)
            try:
                pid = await start_child_process(spec)
            except StartError as e:
                return ("error", "start", e.reason)
            self._children[pid] = spec
            return ("ok", pid)
        if tag == "terminate_child" and len(request) == 2:
            removed = self._children.pop(request[1], None)
            if removed is None:
                return ("error", "not_found")
            await shutdown_children(self._name, [(request[1], removed)])
            return ("ok", None)
        if tag == "which_children":
            running = [(None, pid, spec.type) for pid, spec in self._children.items()]
            return running + [(None, None, spec.type) for spec in self._restarting.values()]
        if tag == "count_children":
            specs = [*self._children.values(), *self._restarting.values()]
            supervisors = sum(1 for spec in specs if spec.type == "supervisor")
            return {
                "specs": len(specs),
                "active": sum(1 for pid in self._children if is_alive(pid)),
                "supervisors": supervisors,
                "workers": len(specs) - supervisors,
            }
        report(logging.ERROR, self._name, "unexpected_message", None, call=request)
        return ("error", f"unknown dynamic supervisor request {request!r}")

    # -- mechanism ---------------------------------------------------------------------------

    async def _child_exit(self, pid: Pid, reason: Any) -> None:
        spec = self._children.pop(pid, None)
        if spec is None:
            return  # a child already terminated, or a stranger's link
        if self._report_exit(spec, pid, reason):
            await self._restart(spec)

    async def _try_again_restart(self, key: Hashable) -> None:
        spec = self._restarting.pop(key, None)
        if spec is not None:
            await self._restart(spec)

    async def _restart(self, spec: Child) -> None:
        if not self._restart_allowed(spec):
            raise Stop("shutdown")
        try:
            pid = await start_child_process(spec)
        except StartError as e:
            ref = make_ref()
            self._restarting[ref] = spec
            self._retry_restart(spec, e.reason, ref)
            return
        self._children[pid] = spec
        report(logging.INFO, self._name, "restarted", spec, pid=pid)
