"""Exit reasons, nb.Stop, nb.exit, "kill", trap_exit and crash reports
(docs/architecture.md "Processes")."""

from __future__ import annotations

import logging

import pytest
from actor_helpers import stop_with, wait_forever

import numbeam as nb


async def crash_with(exc: BaseException) -> None:
    raise exc


async def trap_and_forward(to: nb.Pid) -> None:
    nb.trap_exit(True)
    nb.send(to, "trapping")
    while True:
        nb.send(to, ("got", await nb.receive()))


async def swallow_everything(to: nb.Pid) -> None:
    try:
        raise nb.Stop("escaped")
    except Exception:
        nb.send(to, "swallowed")


async def exit_self(reason: object) -> None:
    nb.exit(nb.self(), reason)
    await nb.receive()


async def trap_then_exit_self(to: nb.Pid, reason: object) -> None:
    nb.trap_exit(True)
    nb.exit(nb.self(), reason)
    nb.send(to, ("got", await nb.receive(timeout=2)))


async def link_then_wait(to: nb.Pid, other: nb.Pid) -> None:
    nb.link(other)
    nb.send(to, "linked")
    await nb.receive()


async def trap_on_then_off(to: nb.Pid) -> None:
    nb.trap_exit(True)
    nb.trap_exit(False)
    nb.send(to, "trap off")
    await nb.receive()


def crash_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "numbeam" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "reason",
    ["normal", "shutdown", ("shutdown", "x"), "custom", {"why": [1, 2]}],
    ids=["normal", "shutdown", "shutdown-tuple", "atom", "term"],
)
async def test_stop_ends_process_with_exactly_that_reason(reason: object) -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(stop_with, reason)
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, reason)


async def test_stop_without_reason_is_normal() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(crash_with, nb.Stop())
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "normal")


async def test_stop_is_not_caught_by_except_exception() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(swallow_everything, nb.self())
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "escaped")


async def test_exception_reason_is_the_exception_instance() -> None:
    async with nb.Runtime():
        exc = ValueError("the instance")
        pid, ref = nb.spawn_monitor(crash_with, exc)
        down = await nb.receive(timeout=2)
        assert down.ref == ref and down.pid == pid
        assert down.reason is exc


async def test_crash_logs_a_crash_report(crash_log: pytest.LogCaptureFixture) -> None:
    async with nb.Runtime():
        exc = ValueError("reported")
        pid, _ = nb.spawn_monitor(crash_with, exc)
        await nb.receive(nb.Down, timeout=2)
    [record] = crash_records(crash_log)
    assert record.exc_info is not None and record.exc_info[1] is exc
    assert record.numbeam_pid == pid
    assert record.numbeam_reason is exc
    assert repr(pid) in record.getMessage()
    assert "crash_with" in record.getMessage()


async def test_crash_report_names_registered_process(crash_log: pytest.LogCaptureFixture) -> None:
    async with nb.Runtime():
        nb.spawn(crash_with, ValueError("x"), name="named")
        ref = nb.monitor("named")
        await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=2)
    [record] = crash_records(crash_log)
    assert record.numbeam_name == "named"
    assert "named" in record.getMessage()


@pytest.mark.parametrize("reason", ["normal", "shutdown", ("shutdown", 1), "custom"])
async def test_stop_logs_no_crash_report(
    crash_log: pytest.LogCaptureFixture, reason: object
) -> None:
    async with nb.Runtime():
        nb.spawn_monitor(stop_with, reason)
        await nb.receive(nb.Down, timeout=2)
    assert crash_records(crash_log) == []


async def test_kill_ends_non_trapping_process_with_killed() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(wait_forever)
        nb.exit(pid, "kill")
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "killed")


async def test_kill_cannot_be_trapped() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(trap_and_forward, nb.self())
        assert await nb.receive(timeout=2) == "trapping"
        nb.exit(pid, "kill")
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "killed")


async def test_links_of_killed_process_see_killed() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        pid = nb.spawn_link(wait_forever)
        nb.exit(pid, "kill")
        assert await nb.receive(timeout=2) == nb.Exit(pid, "killed")


async def test_killed_propagated_through_link_kills_non_trapping_process() -> None:
    async with nb.Runtime():
        victim = nb.spawn(wait_forever)
        linked, ref = nb.spawn_monitor(link_then_wait, nb.self(), victim)
        assert await nb.receive(timeout=2) == "linked"
        nb.exit(victim, "kill")
        # The link carries "killed", which is an ordinary exit signal, not an untrappable kill.
        assert await nb.receive(timeout=2) == nb.Down(ref, linked, "killed")


async def test_exit_with_reason_kills_non_trapping_target_with_that_reason() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(wait_forever)
        nb.exit(pid, ("shutdown", "bye"))
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, ("shutdown", "bye"))


async def test_exit_with_reason_to_trapping_target_delivers_exit_message() -> None:
    async with nb.Runtime():
        pid = nb.spawn(trap_and_forward, nb.self())
        assert await nb.receive(timeout=2) == "trapping"
        nb.exit(pid, "shutdown")
        assert await nb.receive(timeout=2) == ("got", nb.Exit(nb.self(), "shutdown"))
        assert nb.is_alive(pid)


async def test_exit_normal_is_ignored_by_non_trapping_target() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(wait_forever)
        nb.exit(pid, "normal")
        nb.exit(pid, "kill")  # the Down must say "killed": "normal" did nothing
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "killed")


async def test_exit_normal_is_delivered_to_trapping_target() -> None:
    async with nb.Runtime():
        pid = nb.spawn(trap_and_forward, nb.self())
        assert await nb.receive(timeout=2) == "trapping"
        nb.exit(pid, "normal")
        assert await nb.receive(timeout=2) == ("got", nb.Exit(nb.self(), "normal"))


async def test_exit_to_dead_pid_is_ignored() -> None:
    async with nb.Runtime():
        pid, _ = nb.spawn_monitor(stop_with, "gone")
        await nb.receive(nb.Down, timeout=2)
        nb.exit(pid, "kill")  # no exception
        nb.exit(pid, "boom")


@pytest.mark.parametrize("reason", ["normal", "boom", ("shutdown", 1)])
async def test_exit_to_self_ends_non_trapping_caller_with_reason(reason: object) -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(exit_self, reason)
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, reason)


async def test_exit_kill_to_self_ends_caller_with_killed() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(exit_self, "kill")
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "killed")


async def test_exit_to_self_when_trapping_delivers_exit_message() -> None:
    async with nb.Runtime():
        pid = nb.spawn(trap_then_exit_self, nb.self(), "boom")
        assert await nb.receive(timeout=2) == ("got", nb.Exit(pid, "boom"))


async def test_trap_exit_returns_previous_flag() -> None:
    async with nb.Runtime():
        assert nb.trap_exit(True) is False
        assert nb.trap_exit(True) is True
        assert nb.trap_exit(False) is True
        assert nb.trap_exit(False) is False


async def test_trap_exit_false_again_lets_signals_kill() -> None:
    async with nb.Runtime():
        pid, ref = nb.spawn_monitor(trap_on_then_off, nb.self())
        assert await nb.receive(timeout=2) == "trap off"
        nb.exit(pid, "boom")
        assert await nb.receive(timeout=2) == nb.Down(ref, pid, "boom")
