"""Monitors: one-way Down notifications (docs/architecture.md "Processes")."""

from __future__ import annotations

import dataclasses

import pytest
from actor_helpers import crash_on_message, dead_pid, wait_forever

import numbeam as nb


async def exit_on_message(reason: object) -> None:
    await nb.receive()
    raise nb.Stop(reason)


async def monitor_then_wait(to: nb.Pid, target: nb.Pid) -> None:
    nb.monitor(target)
    nb.send(to, "monitoring")
    await nb.receive()


async def test_monitor_delivers_down_with_exit_reason() -> None:
    async with nb.Runtime():
        pid = nb.spawn(exit_on_message, "finished")
        ref = nb.monitor(pid)
        nb.send(pid, "go")
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "finished")


async def test_monitor_delivers_down_with_exception_instance_on_crash() -> None:
    async with nb.Runtime():
        exc = ZeroDivisionError("x")
        pid = nb.spawn(crash_on_message, exc)
        ref = nb.monitor(pid)
        nb.send(pid, "go")
        down = await nb.receive(timeout=2)
        assert down.ref == ref and down.pid == pid
        assert down.reason is exc


async def test_monitor_of_dead_pid_delivers_noproc_at_once() -> None:
    async with nb.Runtime():
        pid = await dead_pid()
        ref = nb.monitor(pid)
        assert await nb.receive(timeout=0) == nb.Down(ref, pid, "noproc")


async def test_monitor_by_registered_name() -> None:
    async with nb.Runtime():
        pid = nb.spawn(exit_on_message, "bye", name="watched")
        ref = nb.monitor("watched")
        nb.send("watched", "go")
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "bye")


async def test_monitor_of_unregistered_name_delivers_noproc_at_once() -> None:
    async with nb.Runtime():
        ref = nb.monitor("nobody")
        down = await nb.receive(timeout=0)
        assert type(down) is nb.Down
        assert down.ref == ref and down.reason == "noproc"


async def test_each_monitor_gets_its_own_down() -> None:
    async with nb.Runtime():
        pid = nb.spawn(exit_on_message, "bye")
        refs = {nb.monitor(pid), nb.monitor(pid)}
        assert len(refs) == 2
        nb.send(pid, "go")
        downs = [await nb.receive(timeout=2) for _ in range(2)]
        assert {d.ref for d in downs} == refs
        assert all(d.reason == "bye" for d in downs)


async def test_monitor_is_one_way() -> None:
    async with nb.Runtime():
        target = nb.spawn(wait_forever)
        watcher, watcher_ref = nb.spawn_monitor(monitor_then_wait, nb.self(), target)
        assert await nb.receive(str, timeout=2) == "monitoring"
        nb.exit(watcher, "boom")
        assert await nb.receive(timeout=2) == nb.Down(watcher_ref, watcher, "boom")
        assert nb.is_alive(target)


async def test_monitor_is_removed_when_the_watcher_exits() -> None:
    async with nb.Runtime():
        target = nb.spawn(wait_forever)
        watcher, _ = nb.spawn_monitor(monitor_then_wait, nb.self(), target)
        await nb.receive(str, timeout=2)
        assert nb.process_info(target)["monitored_by"] == [watcher]
        nb.exit(watcher, "kill")
        await nb.receive(nb.Down, timeout=2)
        assert nb.process_info(target)["monitored_by"] == []


async def test_demonitor_stops_the_down() -> None:
    async with nb.Runtime():
        pid = nb.spawn(exit_on_message, "bye")
        ref = nb.monitor(pid)
        nb.demonitor(ref)
        check = nb.monitor(pid)
        nb.send(pid, "go")
        # The second monitor's Down is sent after the first would have been.
        assert await nb.receive(timeout=2) == nb.Down(check, pid, "bye")
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)


async def test_demonitor_returns_true_for_active_monitor() -> None:
    async with nb.Runtime():
        ref = nb.monitor(nb.spawn(wait_forever))
        assert nb.demonitor(ref) is True
        assert nb.demonitor(ref) is False


async def test_demonitor_returns_false_after_the_down_fired() -> None:
    async with nb.Runtime():
        pid = nb.spawn(exit_on_message, "bye")
        ref = nb.monitor(pid)
        nb.send(pid, "go")
        await nb.receive(nb.Down, timeout=2)
        assert nb.demonitor(ref) is False


async def test_demonitor_flush_removes_down_already_in_mailbox() -> None:
    async with nb.Runtime():
        pid = nb.spawn(exit_on_message, "bye")
        ref = nb.monitor(pid)
        marker_ref = nb.monitor(pid)
        nb.send(pid, "go")
        await nb.receive(lambda m: type(m) is nb.Down and m.ref == marker_ref, timeout=2)
        nb.send(nb.self(), "after")
        assert nb.process_info(nb.self())["message_queue_len"] == 2
        nb.demonitor(ref, flush=True)
        assert await nb.receive(timeout=0) == "after"
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)


async def test_demonitor_without_flush_leaves_down_in_mailbox() -> None:
    async with nb.Runtime():
        pid = nb.spawn(exit_on_message, "bye")
        ref = nb.monitor(pid)
        marker_ref = nb.monitor(pid)
        nb.send(pid, "go")
        await nb.receive(lambda m: type(m) is nb.Down and m.ref == marker_ref, timeout=2)
        nb.demonitor(ref)
        assert await nb.receive(timeout=0) == nb.Down(ref, pid, "bye")


async def test_demonitor_flush_keeps_other_messages_in_order() -> None:
    async with nb.Runtime():
        nb.send(nb.self(), 1)
        ref = nb.monitor(await dead_pid())  # Down "noproc" is now queued after 1
        nb.send(nb.self(), 2)
        nb.demonitor(ref, flush=True)
        assert [await nb.receive(timeout=0) for _ in range(2)] == [1, 2]


async def test_down_is_a_frozen_dataclass() -> None:
    async with nb.Runtime():
        ref = nb.monitor(await dead_pid())
        down = await nb.receive(timeout=0)
        assert down.ref == ref
        with pytest.raises(dataclasses.FrozenInstanceError):
            down.reason = "changed"  # type: ignore[misc]
