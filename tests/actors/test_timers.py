"""Timers: send_after and cancel_timer (docs/architecture.md "Processes")."""

from __future__ import annotations

import pytest
from actor_helpers import exit_on_message

import numbeam as nb


async def forward_one(to: nb.Pid) -> None:
    nb.send(to, ("forwarded", await nb.receive()))


async def test_send_after_delivers_message_to_pid() -> None:
    async with nb.Runtime():
        tref = nb.send_after(0.01, nb.self(), "tick")
        assert isinstance(tref, nb.TimerRef)
        assert await nb.receive(timeout=2) == "tick"


async def test_send_after_does_not_deliver_before_the_delay() -> None:
    async with nb.Runtime():
        nb.send_after(10, nb.self(), "late")
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0.02)


async def test_send_after_zero_delay_delivers() -> None:
    async with nb.Runtime():
        nb.send_after(0, nb.self(), "now")
        assert await nb.receive(timeout=2) == "now"


async def test_send_after_delivers_to_registered_name() -> None:
    async with nb.Runtime():
        nb.spawn(forward_one, nb.self(), name="fwd")
        nb.send_after(0.01, "fwd", "tick")
        assert await nb.receive(timeout=2) == ("forwarded", "tick")


async def test_send_after_to_name_looks_the_name_up_when_it_fires() -> None:
    async with nb.Runtime():
        nb.send_after(0.02, "later", "tick")
        nb.spawn(forward_one, nb.self(), name="later")  # registered after the timer was set
        assert await nb.receive(timeout=2) == ("forwarded", "tick")


async def test_timers_fire_in_deadline_order() -> None:
    async with nb.Runtime():
        nb.send_after(0.03, nb.self(), "third")
        nb.send_after(0.01, nb.self(), "first")
        nb.send_after(0.02, nb.self(), "second")
        assert [await nb.receive(timeout=2) for _ in range(3)] == ["first", "second", "third"]


async def test_cancel_timer_returns_remaining_seconds() -> None:
    async with nb.Runtime():
        tref = nb.send_after(10, nb.self(), "never")
        left = nb.cancel_timer(tref)
        assert type(left) is float
        assert 9 < left <= 10


async def test_cancelled_timer_does_not_deliver() -> None:
    async with nb.Runtime() as rt:
        tref = nb.send_after(0.01, nb.self(), "cancelled")
        nb.send_after(0.02, nb.self(), "marker")
        nb.cancel_timer(tref)
        assert rt.statistics()["timers"] == 1
        assert await nb.receive(timeout=2) == "marker"
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)


async def test_cancel_timer_after_it_fired_returns_false() -> None:
    async with nb.Runtime():
        tref = nb.send_after(0, nb.self(), "tick")
        await nb.receive(timeout=2)
        assert nb.cancel_timer(tref) is False


async def test_cancel_timer_twice_returns_false_the_second_time() -> None:
    async with nb.Runtime():
        tref = nb.send_after(10, nb.self(), "never")
        assert nb.cancel_timer(tref) is not False
        assert nb.cancel_timer(tref) is False


async def test_timer_to_dead_process_is_void() -> None:
    async with nb.Runtime() as rt:
        pid, _ = nb.spawn_monitor(exit_on_message)
        nb.send(pid, "go")
        await nb.receive(nb.Down, timeout=2)
        tref = nb.send_after(0, pid, "tick")
        assert rt.statistics()["timers"] == 0
        assert nb.cancel_timer(tref) is False


async def test_timer_to_process_is_cancelled_when_it_exits() -> None:
    async with nb.Runtime() as rt:
        pid, _ = nb.spawn_monitor(exit_on_message)
        tref = nb.send_after(10, pid, "tick")
        assert rt.statistics()["timers"] == 1
        nb.send(pid, "go")
        await nb.receive(nb.Down, timeout=2)
        assert rt.statistics()["timers"] == 0
        assert nb.cancel_timer(tref) is False
