"""nb.run, nb.Runtime's lifecycle and shutdown, asyncio compatibility, and a light scale test."""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util

import pytest
from actor_helpers import add, crash_on_message, echo, wait_forever

import numbeam as nb

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def answer(to: nb.Pid, i: int) -> None:
    nb.send(to, i)


async def exit_shell_on_message(shell: nb.Pid, reason: object) -> None:
    await nb.receive()
    nb.exit(shell, reason)


async def report_cleanup(log: list[str], tag: str, how: str, to: nb.Pid) -> None:
    try:
        nb.send(to, "started")
        if how == "receive":
            await nb.receive()
        elif how == "sleep":
            await asyncio.sleep(3600)
        else:
            await asyncio.Event().wait()
    finally:
        log.append(tag)


async def cleanup_then_report(to: nb.Pid, how: str) -> None:
    try:
        nb.send(to, "waiting")
        if how == "sleep":
            await asyncio.sleep(3600)
        else:
            await asyncio.Event().wait()
    finally:
        nb.send(to, "finally ran")


async def trap_until_exit(log: list[object], to: nb.Pid) -> None:
    nb.trap_exit(True)
    nb.send(to, "trapping")
    log.append(await nb.receive(nb.Exit))


# ---- nb.run --------------------------------------------------------------------------------


async def fail(message: str) -> None:
    raise ValueError(message)


async def main_identity() -> tuple[nb.Pid, list[nb.Pid]]:
    return nb.self(), nb.processes()


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


async def spawn_and_leave(log: list[str]) -> None:
    nb.spawn(report_cleanup, log, "receive", "receive", nb.self())
    nb.spawn(report_cleanup, log, "sleep", "sleep", nb.self())
    for _ in range(2):
        await nb.receive(timeout=2)


def test_run_returns_main_result() -> None:
    assert nb.run(add, 2, 3) == 5


def test_run_raises_main_exception() -> None:
    with pytest.raises(ValueError, match="from main"):
        nb.run(fail, "from main")


def test_run_runs_main_as_a_process() -> None:
    pid, live = nb.run(main_identity)
    assert type(pid) is nb.Pid
    assert live == [pid]


def test_run_stops_processes_main_left_running() -> None:
    log: list[str] = []
    nb.run(spawn_and_leave, log)
    assert sorted(log) == ["receive", "sleep"]


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_run_uses_uvloop_when_installed() -> None:
    assert nb.run(loop_module).startswith("uvloop")


def test_run_with_uvloop_false_uses_default_loop() -> None:
    assert nb.run(loop_module, uvloop=False).startswith("asyncio")


async def test_run_inside_running_loop_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match=r"nb\.Runtime"):
        nb.run(add, 1, 2)


# ---- nb.Runtime ----------------------------------------------------------------------------


async def test_runtime_shell_is_a_process_with_pid_and_mailbox() -> None:
    async with nb.Runtime() as rt:
        assert type(rt.pid) is nb.Pid
        assert nb.processes() == [rt.pid]
        echo_pid = nb.spawn(echo)
        nb.send(echo_pid, (rt.pid, "round trip"))
        assert await nb.receive(timeout=2) == "round trip"


async def test_leaving_runtime_ends_every_process() -> None:
    log: list[str] = []
    async with nb.Runtime() as rt:
        for how in ("receive", "sleep", "event"):
            nb.spawn(report_cleanup, log, how, how, nb.self())
        assert rt.statistics()["processes"] == 4
        for _ in range(3):
            assert await nb.receive(timeout=2) == "started"
    assert sorted(log) == ["event", "receive", "sleep"]
    assert rt.statistics()["processes"] == 0


async def test_leaving_runtime_leaves_no_pending_task() -> None:
    before = asyncio.all_tasks()
    async with nb.Runtime():
        for how in ("receive", "sleep", "event"):
            nb.spawn(report_cleanup, [], how, how, nb.self())
        nb.spawn_link(wait_forever)
        for _ in range(3):
            await nb.receive(timeout=2)
    assert asyncio.all_tasks() == before


async def test_leaving_runtime_cancels_every_timer() -> None:
    async with nb.Runtime() as rt:
        nb.send_after(3600, nb.self(), "to the shell")
        nb.send_after(3600, "some name", "to a name")
        nb.send_after(3600, nb.spawn(wait_forever), "to a process")
        assert rt.statistics()["timers"] == 3
    assert rt.statistics() == {"processes": 0, "registered": 0, "timers": 0, "run_queue": 0}


async def test_leaving_runtime_sends_shutdown_to_trapping_linked_process() -> None:
    log: list[object] = []
    async with nb.Runtime() as rt:
        nb.spawn_link(trap_until_exit, log, nb.self())
        assert await nb.receive(timeout=2) == "trapping"
    assert log == [nb.Exit(rt.pid, "shutdown")]


async def test_block_ended_by_stop_exits_shell_with_that_reason() -> None:
    log: list[object] = []
    with pytest.raises(nb.Stop) as info:
        async with nb.Runtime() as rt:
            nb.spawn_link(trap_until_exit, log, nb.self())
            assert await nb.receive(timeout=2) == "trapping"
            raise nb.Stop(("shutdown", "by the shell"))
    assert info.value.reason == ("shutdown", "by the shell")
    assert log == [nb.Exit(rt.pid, ("shutdown", "by the shell"))]


async def test_block_ended_by_exception_exits_shell_with_the_exception() -> None:
    log: list[object] = []
    exc = ValueError("the block failed")
    with pytest.raises(ValueError) as info:
        async with nb.Runtime() as rt:
            nb.spawn_link(trap_until_exit, log, nb.self())
            assert await nb.receive(timeout=2) == "trapping"
            raise exc
    assert info.value is exc
    assert log == [nb.Exit(rt.pid, exc)]


async def test_shell_killed_by_linked_crash_makes_block_raise_stop() -> None:
    exc = ValueError("linked crash")
    with pytest.raises(nb.Stop) as info:
        async with nb.Runtime():
            nb.send(nb.spawn_link(crash_on_message, exc), "go")
            await nb.receive(timeout=5)
    assert info.value.reason is exc


async def test_shell_killed_by_exit_signal_makes_block_raise_stop_with_reason() -> None:
    with pytest.raises(nb.Stop) as info:
        async with nb.Runtime():
            nb.send(nb.spawn(exit_shell_on_message, nb.self(), ("shutdown", "x")), "go")
            await nb.receive(timeout=5)
    assert info.value.reason == ("shutdown", "x")


async def test_shell_killed_by_kill_makes_block_raise_stop_killed() -> None:
    with pytest.raises(nb.Stop) as info:
        async with nb.Runtime():
            nb.send(nb.spawn(exit_shell_on_message, nb.self(), "kill"), "go")
            await nb.receive(timeout=5)
    assert info.value.reason == "killed"


async def test_second_runtime_while_one_is_running_raises_runtime_error() -> None:
    async with nb.Runtime():
        with pytest.raises(RuntimeError, match="already running"):
            async with nb.Runtime():
                pass
        assert nb.is_alive(nb.self())


async def test_runtime_can_start_again_and_old_pids_are_dead() -> None:
    async with nb.Runtime():
        old = nb.spawn(wait_forever)
    async with nb.Runtime():
        fresh = nb.spawn(wait_forever)
        assert old.id == fresh.id  # the same number, a new incarnation
        assert old != fresh
        assert not nb.is_alive(old)
        assert nb.processes() == [nb.self(), fresh]


@pytest.mark.parametrize(
    "call",
    [
        nb.self,
        nb.node,
        nb.processes,
        nb.registered,
        lambda: nb.spawn(wait_forever),
        lambda: nb.spawn_link(wait_forever),
        lambda: nb.spawn_monitor(wait_forever),
        lambda: nb.send("name", "msg"),
        lambda: nb.whereis("name"),
        lambda: nb.monitor("name"),
        lambda: nb.trap_exit(True),
        lambda: nb.send_after(1, "name", "msg"),
    ],
    ids=lambda c: getattr(c, "__name__", "call"),
)
def test_call_outside_runtime_raises_runtime_error(call: object) -> None:
    with pytest.raises(RuntimeError, match=r"nb\.Runtime"):
        call()  # type: ignore[operator]


async def test_receive_outside_runtime_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match=r"nb\.Runtime"):
        await nb.receive(timeout=0)


async def receive_once() -> object:
    return await nb.receive(timeout=0)


async def test_receive_in_task_that_is_not_a_process_raises_runtime_error() -> None:
    async with nb.Runtime():
        task = asyncio.get_running_loop().create_task(receive_once(), context=contextvars.Context())
        with pytest.raises(RuntimeError, match="inside a process"):
            async with asyncio.timeout(2):
                await task


# ---- asyncio compatibility -----------------------------------------------------------------


async def sleep_then_report(to: nb.Pid) -> None:
    await asyncio.sleep(0.001)
    nb.send(to, "slept")


async def timeout_then_report(to: nb.Pid) -> None:
    try:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()
    except TimeoutError:
        nb.send(to, "timed out")


async def queue_then_report(to: nb.Pid) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def produce() -> None:
        for i in range(3):
            await queue.put(i)

    producer = asyncio.create_task(produce())
    got = [await queue.get() for _ in range(3)]
    await producer
    nb.send(to, got)


async def gather_then_report(to: nb.Pid) -> None:
    async def whoami(i: int) -> tuple[int, nb.Pid]:
        await asyncio.sleep(0)
        return i, nb.self()

    nb.send(to, await asyncio.gather(*(whoami(i) for i in range(3))))


async def test_asyncio_sleep_works_inside_a_process() -> None:
    async with nb.Runtime():
        nb.spawn(sleep_then_report, nb.self())
        assert await nb.receive(timeout=2) == "slept"


async def test_asyncio_timeout_works_inside_a_process() -> None:
    async with nb.Runtime():
        nb.spawn(timeout_then_report, nb.self())
        assert await nb.receive(timeout=2) == "timed out"


async def test_asyncio_queue_works_inside_a_process() -> None:
    async with nb.Runtime():
        nb.spawn(queue_then_report, nb.self())
        assert await nb.receive(timeout=2) == [0, 1, 2]


async def test_gathered_subtasks_inside_a_process_see_its_pid() -> None:
    async with nb.Runtime():
        pid = nb.spawn(gather_then_report, nb.self())
        assert await nb.receive(timeout=2) == [(0, pid), (1, pid), (2, pid)]


@pytest.mark.parametrize("how", ["sleep", "event"])
async def test_process_killed_while_awaiting_asyncio_is_cancelled_cleanly(how: str) -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(cleanup_then_report, nb.self(), how)
        assert await nb.receive(timeout=2) == "waiting"
        nb.exit(pid, "kill")
        assert await nb.receive(timeout=2) == "finally ran"
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "killed")


@pytest.mark.parametrize("how", ["sleep", "event"])
async def test_process_stopped_by_exit_signal_while_awaiting_asyncio_has_that_reason(
    how: str,
) -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(cleanup_then_report, nb.self(), how)
        assert await nb.receive(timeout=2) == "waiting"
        nb.exit(pid, ("shutdown", "bye"))
        assert await nb.receive(timeout=2) == "finally ran"
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, ("shutdown", "bye"))


# ---- robustness and scale ------------------------------------------------------------------


async def test_runtime_survives_a_crashing_process() -> None:
    async with nb.Runtime():
        echo_pid = nb.spawn(echo)
        crasher, ref = nb.spawn_monitor(crash_on_message, RuntimeError("boom"))
        nb.send(crasher, "go")
        assert (await nb.receive(timeout=2)).ref == ref
        nb.send(echo_pid, (nb.self(), "still here"))
        assert await nb.receive(timeout=2) == "still here"


async def test_ten_thousand_processes_all_answer() -> None:
    async with nb.Runtime():
        n = 10_000
        me = nb.self()
        for i in range(n):
            nb.spawn(answer, me, i)
        got = {await nb.receive(timeout=5) for _ in range(n)}
        assert got == set(range(n))
