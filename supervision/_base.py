"""What Supervisor and DynamicSupervisor share, written once as a private base class.

Both are GenServers that trap exits and turn a child's `nb.Exit` into a restart decision;
they differ only in how they hold their children (an ordered list of records with ids, or a
map from pid to spec), so each says that through two hooks, `_child_exit` and
`_try_again_restart`, and this class does the rest the same way for both: start arguments
are checked in the caller before any process starts (a bad flag raises TypeError or
ValueError where it was written, not an `nb.StartError` from inside `init`), the restart
intensity is counted and reported, a child's exit is reported as OTP does, and a failed
restart is retried through a cast to self, as OTP's ``try_again_restart``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Final

from numbeam.actors import (
    Exit,
    GenServer,
    Pid,
    TimerRef,
    cast,
    is_normal_exit,
    process_info,
    send_after,
    trap_exit,
)
from numbeam.actors import self as _self

from ._child import Child, report
from ._policy import add_restart, intensity_exceeded, should_restart

__all__ = ["SupervisorBase", "supervisor_name"]

_TRY_AGAIN: Final = "$try_again_restart"
_BACKOFF: Final = "$backoff_restart"


def supervisor_name() -> Any:
    """How reports name the calling supervisor: its registered name, else its pid."""
    me = _self()
    info = process_info(me)
    name = None if info is None else info.get("registered_name")
    return me if name is None else name


class SupervisorBase(GenServer):
    """The machinery Supervisor and DynamicSupervisor share; not public.

    A subclass sets `_flags` to a function with its `init`'s signature that validates the
    flags, calls `_init_supervisor` first in `init`, and implements `_child_exit` and
    `_try_again_restart`.
    """

    _is_supervisor = True

    _flags: ClassVar[Callable[..., Any]]
    """Checks start arguments as the class's own `init` takes them; raises on a bad one."""

    _flags_init: ClassVar[Callable[..., Any]]
    """The `init` that `_flags` checks for: a subclass that overrides it takes its own args."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_flags" in vars(cls):
            cls._flags_init = cls.init

    # -- client API --------------------------------------------------------------------------

    @classmethod
    async def start_link(
        cls,
        *args: Any,
        name: str | None = None,
        node: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> Pid:
        """Start the supervisor linked to the caller, its flags checked before it starts (on
        another node, or a device's worker, with `node` / `device`)."""
        cls._check_start_args(args, kwargs)
        args = cls._for_remote(args, node, device)
        return await super().start_link(*args, name=name, node=node, device=device, **kwargs)

    @classmethod
    async def start(
        cls,
        *args: Any,
        name: str | None = None,
        node: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> Pid:
        """Like `start_link`, without linking the supervisor to the caller."""
        cls._check_start_args(args, kwargs)
        args = cls._for_remote(args, node, device)
        return await super().start(*args, name=name, node=node, device=device, **kwargs)

    @classmethod
    def _for_remote(
        cls, args: tuple[Any, ...], node: str | None, device: str | None
    ) -> tuple[Any, ...]:
        """The start arguments as they can cross to another node (child specs as data)."""
        return args

    @classmethod
    def _check_start_args(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Validate start arguments with `_flags` before any process starts, unless a
        subclass overrides `init` (it then takes arguments of its own)."""
        if cls.init is not cls._flags_init:
            return
        try:
            inspect.signature(cls._flags).bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{cls.__name__}.start_link(): {e}") from None
        cls._flags(*args, **kwargs)

    # -- the supervisor process --------------------------------------------------------------

    def _init_supervisor(self, intensity: int, period: float) -> None:
        """Trap exits and set up the restart bookkeeping; the first thing `init` does."""
        trap_exit(True)
        self._intensity = intensity
        self._period = float(period)
        self._restarts: tuple[float, ...] = ()
        self._name = supervisor_name()

    async def handle_cast(self, request: Any) -> None:
        if type(request) is tuple and len(request) == 2 and request[0] == _TRY_AGAIN:
            await self._try_again_restart(request[1])
            return
        if type(request) is tuple and len(request) == 2 and request[0] == _BACKOFF:
            await self._backoff_restart(request[1])
            return
        report(logging.ERROR, self._name, "unexpected_message", None, cast=request)

    async def handle_info(self, msg: Any) -> None:
        if type(msg) is Exit:
            await self._child_exit(msg.pid, msg.reason)
            return
        report(logging.ERROR, self._name, "unexpected_message", None, msg=msg)

    async def _child_exit(self, pid: Pid, reason: Any) -> None:
        """Handle the `nb.Exit` of `pid`: a child, or a child already handled, or a stranger."""
        raise NotImplementedError

    async def _try_again_restart(self, key: Hashable) -> None:
        """Retry the restart that `_retry_restart` queued under `key`, if still wanted."""
        raise NotImplementedError

    async def _backoff_restart(self, key: Hashable) -> None:
        """Make the restart that `_delay_restart` put off under `key`, if still wanted."""
        raise NotImplementedError

    def _delay_restart(self, spec: Child, delay: float, key: Hashable) -> TimerRef:
        """Restart backoff: report, and come back to `_backoff_restart` in `delay` seconds."""
        report(logging.INFO, self._name, "restart_delayed", spec, delay=delay)
        return send_after(delay, _self(), ("$gen_cast", (_BACKOFF, key)))

    def _report_exit(self, spec: Child, pid: Pid | None, reason: Any) -> bool:
        """Report a child's exit as OTP does; True when its restart type says to restart it."""
        if not should_restart(spec.restart, reason):
            if not is_normal_exit(reason):
                report(logging.ERROR, self._name, "child_terminated", spec, pid=pid, reason=reason)
            return False
        level = logging.INFO if is_normal_exit(reason) else logging.ERROR
        report(level, self._name, "child_terminated", spec, pid=pid, reason=reason)
        return True

    def _restart_allowed(self, spec: Child) -> bool:
        """Count a restart of `spec`; False (reported) when that exceeds the intensity."""
        now = asyncio.get_running_loop().time()
        self._restarts = add_restart(self._restarts, now, self._period)
        if not intensity_exceeded(self._restarts, self._intensity):
            return True
        report(
            logging.ERROR,
            self._name,
            "reached_max_restart_intensity",
            None,
            intensity=self._intensity,
            period=self._period,
            last_child=spec.id,
        )
        return False

    def _retry_restart(self, spec: Child, reason: Any, key: Hashable) -> None:
        """Report that `spec` failed to restart and queue a retry under `key`."""
        report(logging.ERROR, self._name, "start_error", spec, reason=reason)
        cast(_self(), (_TRY_AGAIN, key))
