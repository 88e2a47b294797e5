"""Deadlines in the runtime's own heap: receive and call timeouts, send_after (issue 11).

A receive that finds its message arms nothing; a process that parks notes its timeout, armed
only if it is still waiting once the run queue is drained; waits that end leave dead entries
that are dropped lazily, and the heap stays bounded.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import numbeam as nb


def _rt() -> nb.Runtime:
    from numbeam.actors import _runtime

    rt = _runtime._runtime
    assert rt is not None
    return rt


class Echo(nb.GenServer):
    async def handle_call(self, request: object, caller: object) -> object:
        if request == "hang":
            return nb.NOREPLY
        if request == "reply-then-die":
            nb.reply(caller, "bye")  # type: ignore[arg-type]
            raise nb.Stop("done")
        if request == "chatty":
            pid, _ = caller  # type: ignore[misc]
            nb.send(pid, "before the reply")
            return "answer"
        return request


async def test_timeout_is_positional_or_keyword() -> None:
    async with nb.Runtime():
        nb.send(nb.self(), "a")
        assert await nb.receive(None, 1.0) == "a"
        with pytest.raises(TimeoutError):
            await nb.receive(None, 0.01)
        with pytest.raises(TypeError):
            await nb.receive(None, True)
        with pytest.raises(ValueError):
            await nb.receive(None, -1)


async def test_a_receive_that_finds_its_message_arms_nothing() -> None:
    async with nb.Runtime():
        rt = _rt()
        for i in range(100):
            nb.send(nb.self(), i)
            assert await nb.receive(timeout=10) == i
        assert rt._deadlines == [] and rt._unarmed == []
        assert rt._deadline_handle is None


async def test_a_timeout_never_fires_early() -> None:
    async with nb.Runtime():
        for timeout in (0.02, 0.05):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await nb.receive(timeout=timeout)
            assert time.monotonic() - t0 >= timeout - 0.002  # (clock rounding only)


async def _pong(n: int) -> None:
    for _ in range(n):
        sender, msg = await nb.receive(timeout=10)
        await asyncio.sleep(0)  # every park crosses a loop iteration: each one is armed
        nb.send(sender, msg)


async def test_dead_entries_are_dropped_and_the_heap_stays_bounded() -> None:
    async with nb.Runtime():
        rt = _rt()
        n = 3000
        pong = nb.spawn(_pong, n)
        for i in range(n):
            nb.send(pong, (nb.self(), i))
            assert await nb.receive(timeout=10) == i
        # Thousands of armed waits ended before their deadline; the heap was compacted.
        assert len(rt._deadlines) <= 1024 + 4
        # A pending deadline still fires after the compactions.
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0.01)


async def test_deadlines_of_receives_and_timers_fire_in_order() -> None:
    async with nb.Runtime():
        me = nb.self()

        async def waiter(timeout: float, tag: str) -> None:
            try:
                await nb.receive(timeout=timeout)
            except TimeoutError:
                nb.send(me, tag)

        # (Spaced widely: a loaded machine may stall the loop for tens of milliseconds.)
        nb.send_after(0.1, me, "timer 0.1")
        nb.spawn(waiter, 0.2, "receive 0.2")
        nb.spawn(waiter, 0.01, "receive 0.01")
        tref = nb.send_after(0.05, me, "cancelled")
        assert nb.cancel_timer(tref) > 0
        got = [await nb.receive(timeout=2) for _ in range(3)]
        assert got == ["receive 0.01", "timer 0.1", "receive 0.2"]
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0.05)  # the cancelled timer stays silent


async def test_selective_receive_times_out_under_a_flood_of_other_messages() -> None:
    async with nb.Runtime():
        me = nb.self()

        async def flood() -> None:
            while True:
                nb.send(me, "noise")
                await asyncio.sleep(0)

        nb.spawn_link(flood)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await nb.receive(int, timeout=0.05)
        assert time.monotonic() - t0 < 2


async def test_call_replies_directly_and_leaves_other_messages_in_order() -> None:
    async with nb.Runtime():
        server = await Echo.start_link()
        nb.send(nb.self(), "first")
        assert await nb.call(server, "chatty", 1.0) == "answer"
        assert await nb.call(server, 7, 1.0) == 7
        assert [await nb.receive(timeout=0) for _ in range(2)] == ["first", "before the reply"]
        info = nb.process_info(server)
        assert info is not None and info["monitored_by"] == []
        assert _rt()._deadlines == []


async def test_call_times_out_and_a_late_reply_is_dropped() -> None:
    async with nb.Runtime():
        server = await Echo.start_link()
        with pytest.raises(TimeoutError):
            await nb.call(server, "hang", 0.02)
        assert await nb.call(server, "ok", 1.0) == "ok"
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)


async def test_call_to_a_server_that_replies_then_dies_leaves_no_down() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        server = await Echo.start_link()
        assert await nb.call(server, "reply-then-die", 1.0) == "bye"
        exit_msg = await nb.receive(nb.Exit, timeout=1.0)
        assert exit_msg.reason == "done"
        with pytest.raises(TimeoutError):
            await nb.receive(nb.Down, timeout=0)


async def test_call_cancelled_from_outside_cleans_up() -> None:
    async with nb.Runtime():
        server = await Echo.start_link()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await nb.call(server, "hang", None)
        info = nb.process_info(server)
        assert info is not None and info["monitored_by"] == []
        assert await nb.call(server, "again", 1.0) == "again"


async def test_two_tasks_of_one_process_cannot_call_at_once() -> None:
    async with nb.Runtime():
        server = await Echo.start_link()
        first = asyncio.ensure_future(nb.call(server, "hang", 1.0))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="two tasks"):
            await nb.call(server, "x", 1.0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
