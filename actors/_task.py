"""Task and Agent: Elixir's two small conveniences over processes.

A `Task` runs one computation in a new process linked to its caller and delivers the result
as a message tagged with a private ref; `await task` (or `task.await_(timeout)`) selectively
receives it, or the task's `Down` if it died first. As with Elixir's Task.async, a crash of
the task kills the caller through the link unless the caller traps exits.

An `Agent` is a GenServer whose whole state is one value, read and changed by functions sent
to it (Elixir's Agent). The functions run inside the agent process, one at a time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from ._genserver import GenServer, call, cast, reply
from ._genserver import stop as _stop
from ._runtime import _check_async_fn, _check_timeout, _me, demonitor, receive
from ._runtime import exit as _exit
from ._runtime import unlink as _unlink
from ._types import CallError, Down, Pid, Ref

__all__ = ["Agent", "Task"]

T = TypeVar("T")

_UNSET: Any = object()


async def _task_main(owner: Pid, ref: Ref, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    reply((owner, ref), await fn(*args))


class Task(Generic[T]):
    """A computation in its own linked process, whose result the caller awaits.

    ``task = nb.Task.async_(fn, *args)`` starts it; ``await task`` waits up to 5 s for the
    result, ``await task.await_(timeout)`` as long as you say. Only the process that started
    the task may await it.
    """

    __slots__ = ("_mref", "_owner", "_ref", "_result", "pid")

    def __init__(self, pid: Pid, owner: Pid, ref: Ref, mref: Ref) -> None:
        self.pid = pid
        self._owner = owner
        self._ref = ref
        self._mref = mref
        self._result: Any = _UNSET

    @classmethod
    def async_(cls, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Task[T]:
        """Run ``fn(*args)`` in a new process linked to and monitored by the caller."""
        me = _me("nb.Task.async_()")
        _check_async_fn(fn, "nb.Task.async_()")
        rt = me.rt
        ref = Ref(rt.node)
        proc = rt._spawn(_task_main, (me.pid, ref, fn, args), None, me)
        mref = rt._monitor(me, proc)
        if me.aliases is None:
            me.aliases = set()
        me.aliases.add(ref)
        return cls(proc.pid, me.pid, ref, mref)

    async def await_(self, timeout: float | None = 5.0) -> T:
        """Wait for the result.

        Raises:
            TimeoutError: no result within `timeout` seconds (the task keeps running).
            nb.CallError: the task exited without a result (seen when the caller traps exits).
        """
        _check_timeout(timeout)
        if self._result is not _UNSET:
            return self._result  # type: ignore[no-any-return]
        me = _me("Task.await_()")
        if me.pid != self._owner:
            raise RuntimeError(f"only the process that started task {self.pid!r} can await it")
        ref, mref = self._ref, self._mref
        msg = await receive(
            lambda m: (
                (type(m) is tuple and len(m) == 2 and type(m[0]) is Ref and m[0] == ref)
                or (type(m) is Down and m.ref == mref)
            ),
            timeout=timeout,
        )
        if me.aliases is not None:
            me.aliases.discard(ref)
        demonitor(mref, flush=True)
        if type(msg) is Down:
            raise CallError(
                msg.reason, f"task {self.pid!r} exited without a result: {msg.reason!r}"
            )
        self._result = msg[1]
        return msg[1]  # type: ignore[no-any-return]

    def __await__(self) -> Generator[Any, None, T]:
        return self.await_().__await__()

    async def shutdown(self, timeout: float | None = 5.0) -> T | None:
        """Stop the task: unlink, send it ``"shutdown"``, kill it after `timeout` seconds.

        Returns its result if it finished before it could be stopped, else None.
        """
        _check_timeout(timeout)
        if self._result is not _UNSET:
            return self._result  # type: ignore[no-any-return]
        me = _me("Task.shutdown()")
        _unlink(self.pid)
        _exit(self.pid, "shutdown")
        ref, mref = self._ref, self._mref
        try:
            await receive(lambda m: type(m) is Down and m.ref == mref, timeout=timeout)
        except TimeoutError:
            _exit(self.pid, "kill")
            await receive(lambda m: type(m) is Down and m.ref == mref)
        if me.aliases is not None:
            me.aliases.discard(ref)
        try:
            msg = await receive(
                lambda m: type(m) is tuple and len(m) == 2 and type(m[0]) is Ref and m[0] == ref,
                timeout=0,
            )
        except TimeoutError:
            return None
        self._result = msg[1]
        return msg[1]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<nb.Task {self.pid!r}>"


async def _apply(fn: Callable[[Any], Any], state: Any) -> Any:
    result = fn(state)
    if inspect.isawaitable(result):
        result = await result
    return result


class Agent(GenServer):
    """A process holding one value (Elixir's Agent).

    ``agent = await nb.Agent.start_link(lambda: 0)``, then ``await nb.Agent.get(agent, f)``,
    ``await nb.Agent.update(agent, f)``, ``await nb.Agent.get_and_update(agent, f)`` (f
    returns ``(reply, new_state)``), ``nb.Agent.cast(agent, f)``, ``await nb.Agent.stop(agent)``.
    The functions may be plain or async; they run inside the agent, one at a time.
    """

    state: Any

    async def init(self, initial: Callable[[], Any]) -> None:  # type: ignore[override]
        if not callable(initial):
            raise TypeError(
                f"Agent.start_link takes a function returning the initial state, got {initial!r}"
            )
        result = initial()
        if inspect.isawaitable(result):
            result = await result
        self.state = result

    async def handle_call(self, request: Any, caller: Any) -> Any:
        op, fn = request
        if op == "get":
            return await _apply(fn, self.state)
        if op == "update":
            self.state = await _apply(fn, self.state)
            return "ok"
        if op == "get_and_update":
            answer, self.state = await _apply(fn, self.state)
            return answer
        raise ValueError(f"unknown Agent request {op!r}")

    async def handle_cast(self, request: Any) -> None:
        _, fn = request
        self.state = await _apply(fn, self.state)

    @staticmethod
    async def get(agent: Pid | str, fn: Callable[[Any], Any], timeout: float | None = 5.0) -> Any:
        """Return ``fn(state)``."""
        return await call(agent, ("get", fn), timeout)

    @staticmethod
    async def update(
        agent: Pid | str, fn: Callable[[Any], Any], timeout: float | None = 5.0
    ) -> None:
        """Replace the state with ``fn(state)`` and wait until it is done."""
        await call(agent, ("update", fn), timeout)

    @staticmethod
    async def get_and_update(
        agent: Pid | str, fn: Callable[[Any], tuple[Any, Any]], timeout: float | None = 5.0
    ) -> Any:
        """``fn(state)`` returns ``(reply, new_state)``: store new_state, return reply."""
        return await call(agent, ("get_and_update", fn), timeout)

    @staticmethod
    def cast(agent: Pid | str, fn: Callable[[Any], Any]) -> None:  # type: ignore[override]
        """Replace the state with ``fn(state)`` without waiting."""
        cast(agent, ("update", fn))

    @staticmethod
    async def stop(agent: Pid | str, reason: Any = "normal", timeout: float | None = 5.0) -> None:
        """Stop the agent and wait until it has exited."""
        await _stop(agent, reason, timeout)
