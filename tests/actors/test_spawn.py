"""spawn, spawn_link, spawn_monitor and self (docs/architecture.md "Processes")."""

from __future__ import annotations

from actor_helpers import wait_forever

import numbeam as nb


async def reply_args(to: nb.Pid, *args: object) -> None:
    nb.send(to, ("args", *args))


async def reply_self(to: nb.Pid) -> None:
    nb.send(to, ("self", nb.self()))


async def crash_at_once(exc: BaseException) -> None:
    raise exc


async def return_at_once() -> str:
    return "done"


async def spawn_link_then_wait(to: nb.Pid, fn: object, *args: object) -> None:
    child = nb.spawn_link(fn, *args)  # type: ignore[arg-type]
    nb.send(to, ("child", child))
    await nb.receive()


async def test_spawn_returns_pid_of_a_new_live_process() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever)
        assert type(pid) is nb.Pid
        assert pid != nb.self()
        assert nb.is_alive(pid)


async def test_each_spawn_gives_a_distinct_pid() -> None:
    async with nb.Runtime():
        pids = {nb.spawn(wait_forever) for _ in range(50)}
        assert len(pids) == 50


async def test_spawn_runs_function_with_its_arguments() -> None:
    async with nb.Runtime():
        payload = {"k": [1, 2]}
        nb.spawn(reply_args, nb.self(), 1, "two", payload)
        msg = await nb.receive(timeout=2)
        assert msg == ("args", 1, "two", payload)
        assert msg[3] is payload  # passed by reference within a node


async def test_spawn_with_name_registers_the_process() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever, name="worker")
        assert nb.whereis("worker") == pid


async def test_process_whose_function_returns_exits_normal() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(return_at_once)
        assert await nb.receive(nb.Down, timeout=2) == nb.Down(ref, pid, "normal")
        assert not nb.is_alive(pid)


async def test_self_in_spawned_process_is_its_pid() -> None:
    async with nb.Runtime():
        pid = nb.spawn(reply_self, nb.self())
        assert await nb.receive(timeout=2) == ("self", pid)


async def test_self_in_shell_is_runtime_pid() -> None:
    async with nb.Runtime() as rt:
        assert nb.self() == rt.pid


async def test_spawn_link_links_both_ways() -> None:
    async with nb.Runtime():
        pid = nb.spawn_link(wait_forever)
        assert pid in nb.process_info(nb.self())["links"]
        assert nb.self() in nb.process_info(pid)["links"]


async def test_spawn_link_to_process_that_crashes_at_once_delivers_exit() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        exc = ValueError("at once")
        pid = nb.spawn_link(crash_at_once, exc)
        msg = await nb.receive(nb.Exit, timeout=2)
        assert msg.pid == pid
        assert msg.reason is exc


async def test_spawn_link_crash_at_once_kills_non_trapping_parent() -> None:
    async with nb.Runtime():
        exc = ValueError("at once")
        parent, ref = nb.spawn_monitor(spawn_link_then_wait, nb.self(), crash_at_once, exc)
        down = await nb.receive(nb.Down, timeout=2)
        assert down.ref == ref and down.pid == parent
        assert down.reason is exc


async def test_spawn_monitor_returns_pid_and_ref() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(wait_forever)
        assert type(pid) is nb.Pid
        assert isinstance(ref, nb.Ref)
        assert nb.process_info(nb.self())["monitors"] == [pid]


async def test_spawn_monitor_of_process_that_crashes_at_once_gets_real_reason() -> None:
    async with nb.Runtime():
        exc = KeyError("gone")
        pid, ref = nb.spawn_monitor(crash_at_once, exc)
        down = await nb.receive(nb.Down, timeout=2)
        assert down == nb.Down(ref, pid, exc)
        assert down.reason is exc


async def test_spawn_monitor_of_process_that_stops_at_once_gets_its_reason() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(crash_at_once, nb.Stop(("shutdown", "early")))
        assert await nb.receive(nb.Down, timeout=2) == nb.Down(ref, pid, ("shutdown", "early"))


async def test_spawn_monitor_does_not_link() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(crash_at_once, nb.Stop("boom"))
        assert await nb.receive(nb.Down, timeout=2) == nb.Down(ref, pid, "boom")
        # The shell was not linked, so it is still alive and was not sent an exit signal.
        assert nb.is_alive(nb.self())
        assert nb.process_info(nb.self())["links"] == []
