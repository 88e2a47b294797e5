"""nb.Task: a linked computation whose result the caller awaits (Elixir's Task.async/await).

The crash cases follow Elixir: a task that raises kills a caller that does not trap exits
(seen here from a third process monitoring that caller), and a caller that traps exits gets
`nb.CallError` from its await instead. Slow tasks wait on a message or an event the test
controls, so timeouts are exercised without racing a real sleep.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from actor_helpers import WAIT, add, down_of

import numbeam as nb


async def wait_for_go() -> str:
    return str(await nb.receive(timeout=WAIT))


async def wait_forever(event: asyncio.Event) -> None:
    await event.wait()


async def fail() -> None:
    raise ValueError("task failed on purpose")


async def test_await_task_returns_the_result() -> None:
    async with nb.Runtime():
        task = nb.Task.async_(add, 2, 3)
        async with asyncio.timeout(WAIT):
            assert await task == 5


async def test_await_leaves_the_callers_mailbox_clean() -> None:
    async with nb.Runtime():
        task = nb.Task.async_(add, 1, 1)
        assert await task.await_(timeout=WAIT) == 2
        assert nb.process_info(nb.self())["message_queue_len"] == 0


async def test_await_twice_returns_the_same_result() -> None:
    async with nb.Runtime():
        task = nb.Task.async_(add, 20, 22)
        assert await task.await_(timeout=WAIT) == 42
        assert await task.await_(timeout=WAIT) == 42


async def test_await_with_timeout_raises_timeout_error_when_slow() -> None:
    async with nb.Runtime():
        task = nb.Task.async_(wait_for_go)
        with pytest.raises(TimeoutError):
            await task.await_(timeout=0.01)
        assert nb.is_alive(task.pid)
        assert await task.shutdown(timeout=WAIT) is None


async def test_task_keeps_running_after_an_await_timeout() -> None:
    async with nb.Runtime():
        task = nb.Task.async_(wait_for_go)
        with pytest.raises(TimeoutError):
            await task.await_(timeout=0.01)
        nb.send(task.pid, "go")
        assert await task.await_(timeout=WAIT) == "go"


async def _await_a_failing_task() -> None:
    task = nb.Task.async_(fail)
    await task.await_(timeout=WAIT)


async def test_crashing_task_kills_a_non_trapping_caller(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        caller, ref = nb.spawn_monitor(_await_a_failing_task)
        down = await down_of(ref)
        assert down.pid == caller
        assert isinstance(down.reason, ValueError)
        assert str(down.reason) == "task failed on purpose"


async def test_crashing_task_raises_call_error_in_a_trapping_caller(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        task = nb.Task.async_(fail)
        with pytest.raises(nb.CallError) as info:
            await task.await_(timeout=WAIT)
        assert isinstance(info.value.reason, ValueError)
        assert await nb.receive(nb.Exit, timeout=WAIT) == nb.Exit(task.pid, info.value.reason)


async def _try_to_await(parent: nb.Pid, task: nb.Task[Any]) -> None:
    try:
        await task.await_(timeout=WAIT)
    except RuntimeError as e:
        nb.send(parent, ("refused", str(e)))
    else:
        nb.send(parent, "awaited")


async def test_only_the_owner_may_await_a_task() -> None:
    async with nb.Runtime():
        task = nb.Task.async_(add, 1, 2)
        nb.spawn(_try_to_await, nb.self(), task)
        msg = await nb.receive(
            lambda m: m == "awaited" or (isinstance(m, tuple) and m[0] == "refused"), timeout=WAIT
        )
        assert msg[0] == "refused"
        assert "only the process that started" in msg[1]
        assert await task.await_(timeout=WAIT) == 3


async def test_shutdown_stops_a_running_task_and_returns_none() -> None:
    async with nb.Runtime():
        never = asyncio.Event()
        task = nb.Task.async_(wait_forever, never)
        ref = nb.monitor(task.pid)
        assert await task.shutdown(timeout=WAIT) is None
        assert not nb.is_alive(task.pid)
        assert (await down_of(ref)).reason == "shutdown"
        assert nb.process_info(nb.self())["links"] == []


async def trap_and_wait(owner: nb.Pid, event: asyncio.Event) -> None:
    nb.trap_exit(True)
    nb.send(owner, "trapping")
    await event.wait()


async def test_shutdown_kills_a_task_that_ignores_the_shutdown_signal() -> None:
    async with nb.Runtime():
        never = asyncio.Event()
        task = nb.Task.async_(trap_and_wait, nb.self(), never)
        assert await nb.receive(timeout=WAIT) == "trapping"
        ref = nb.monitor(task.pid)
        assert await task.shutdown(timeout=0.01) is None
        assert (await down_of(ref)).reason == "killed"


async def test_shutdown_returns_the_result_if_the_task_had_finished() -> None:
    async with nb.Runtime():
        task = nb.Task.async_(add, 4, 5)
        ref = nb.monitor(task.pid)
        assert (await down_of(ref)).reason in ("normal", "noproc")
        assert await task.shutdown(timeout=WAIT) == 9
        assert nb.process_info(nb.self())["message_queue_len"] == 0


async def test_async_rejects_a_non_async_function() -> None:
    def not_async() -> int:
        return 1

    async with nb.Runtime():
        with pytest.raises(TypeError, match="async"):
            nb.Task.async_(not_async)  # type: ignore[arg-type]
