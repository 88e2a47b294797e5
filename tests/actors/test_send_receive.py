"""send and selective receive: destinations, ordering, matching, timeouts, cancellation."""

from __future__ import annotations

import asyncio

import pytest
from actor_helpers import dead_pid, echo

import numbeam as nb


async def send_all(to: nb.Pid, msgs: list[object]) -> None:
    for m in msgs:
        nb.send(to, m)


async def report_task_then_receive(to: nb.Pid) -> None:
    """Park in receive; when the receive is cancelled, report what the mailbox still holds."""
    nb.send(to, ("task", asyncio.current_task()))
    try:
        await nb.receive()
    except asyncio.CancelledError:
        nb.send(to, ("cancelled", await nb.receive(timeout=0)))
        return
    nb.send(to, "receive returned")


async def test_send_to_pid_delivers() -> None:
    async with nb.Runtime():
        pid = nb.spawn(echo)
        nb.send(pid, (nb.self(), "hello"))
        assert await nb.receive(timeout=2) == "hello"


async def test_send_to_self_delivers() -> None:
    async with nb.Runtime():
        nb.send(nb.self(), "note")
        assert await nb.receive(timeout=0) == "note"


async def test_send_to_registered_name_delivers() -> None:
    async with nb.Runtime():
        nb.spawn(echo, name="echo")
        nb.send("echo", (nb.self(), "by name"))
        assert await nb.receive(timeout=2) == "by name"


async def test_send_to_name_node_tuple_on_this_node_delivers() -> None:
    async with nb.Runtime():
        nb.spawn(echo, name="echo")
        nb.send(("echo", nb.node()), (nb.self(), "by name and node"))
        assert await nb.receive(timeout=2) == "by name and node"


async def test_send_to_dead_pid_is_dropped_silently() -> None:
    async with nb.Runtime():
        pid = await dead_pid()
        nb.send(pid, "into the void")  # no exception
        assert not nb.is_alive(pid)


async def test_send_to_unregistered_name_raises_noproc() -> None:
    async with nb.Runtime():
        with pytest.raises(nb.NoProc, match="nobody"):
            nb.send("nobody", "hello")


async def test_send_to_unregistered_name_node_tuple_raises_noproc() -> None:
    async with nb.Runtime():
        with pytest.raises(nb.NoProc):
            nb.send(("nobody", nb.node()), "hello")


async def test_receive_returns_messages_in_fifo_order() -> None:
    async with nb.Runtime():
        for i in range(5):
            nb.send(nb.self(), i)
        assert [await nb.receive(timeout=0) for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_messages_between_two_processes_arrive_in_send_order() -> None:
    async with nb.Runtime():
        n = 10_000
        nb.spawn(send_all, nb.self(), list(range(n)))
        got = [await nb.receive(timeout=5) for _ in range(n)]
        assert got == list(range(n))


async def test_selective_receive_with_predicate_leaves_others_in_order() -> None:
    async with nb.Runtime():
        for m in ["a", 1, "b", 2, "c"]:
            nb.send(nb.self(), m)
        assert await nb.receive(lambda m: m == 2, timeout=0) == 2
        assert [await nb.receive(timeout=0) for _ in range(4)] == ["a", 1, "b", "c"]


async def test_selective_receive_by_type_takes_oldest_of_that_type() -> None:
    async with nb.Runtime():
        for m in ["a", 1, "b", 2]:
            nb.send(nb.self(), m)
        assert await nb.receive(int, timeout=0) == 1
        assert await nb.receive(int, timeout=0) == 2
        assert [await nb.receive(timeout=0) for _ in range(2)] == ["a", "b"]


async def test_selective_receive_by_tuple_of_types() -> None:
    async with nb.Runtime():
        for m in ["a", 1.5, b"x", 2]:
            nb.send(nb.self(), m)
        assert await nb.receive((bytes, int), timeout=0) == b"x"
        assert await nb.receive((bytes, int), timeout=0) == 2
        assert [await nb.receive(timeout=0) for _ in range(2)] == ["a", 1.5]


async def test_selective_receive_waits_for_a_matching_message() -> None:
    async with nb.Runtime():
        nb.spawn(send_all, nb.self(), ["skip", "skip too", ("wanted", 1)])
        assert await nb.receive(tuple, timeout=2) == ("wanted", 1)
        assert [await nb.receive(timeout=0) for _ in range(2)] == ["skip", "skip too"]


async def test_receive_timeout_expiry_raises_timeout_error() -> None:
    async with nb.Runtime():
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0.01)


async def test_selective_receive_timeout_leaves_non_matching_messages() -> None:
    async with nb.Runtime():
        nb.send(nb.self(), "a")
        nb.send(nb.self(), "b")
        with pytest.raises(TimeoutError):
            await nb.receive(int, timeout=0.01)
        assert [await nb.receive(timeout=0) for _ in range(2)] == ["a", "b"]


async def test_receive_timeout_zero_returns_waiting_message() -> None:
    async with nb.Runtime():
        nb.send(nb.self(), "here")
        assert await nb.receive(timeout=0) == "here"


async def test_receive_timeout_zero_on_empty_mailbox_raises_at_once() -> None:
    async with nb.Runtime():
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)
        assert loop.time() - start < 0.5


async def test_message_arriving_during_a_timed_wait_is_returned() -> None:
    async with nb.Runtime():
        # The sender runs only once the shell has parked in receive.
        nb.spawn(send_all, nb.self(), ["late"])
        assert await nb.receive(timeout=5) == "late"


async def test_message_sent_at_the_timeout_deadline_is_returned() -> None:
    async with nb.Runtime():
        # The timer is due no later than the receive's deadline, possibly in the same loop
        # iteration as the expiry: the message must win over the timeout.
        nb.send_after(0.02, nb.self(), "just in time")
        assert await nb.receive(timeout=0.02) == "just in time"


async def test_cancelled_receive_does_not_eat_a_later_message() -> None:
    async with nb.Runtime():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await nb.receive()
        nb.spawn(send_all, nb.self(), ["after"])
        assert await nb.receive(timeout=2) == "after"


async def test_receive_works_again_after_a_cancelled_receive() -> None:
    async with nb.Runtime():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await nb.receive()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await nb.receive()
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0.01)


async def test_cancelled_selective_receive_leaves_mailbox_unchanged() -> None:
    async with nb.Runtime():
        nb.send(nb.self(), "x")
        nb.send(nb.self(), "y")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await nb.receive(int)
        assert nb.process_info(nb.self())["message_queue_len"] == 2
        assert [await nb.receive(timeout=0) for _ in range(2)] == ["x", "y"]


async def test_receive_cancelled_after_being_woken_keeps_the_message() -> None:
    async with nb.Runtime():
        pid = nb.spawn(report_task_then_receive, nb.self())
        tag, task = await nb.receive(timeout=2)
        assert tag == "task"
        # The receiver is parked: wake it with a message and cancel it before it runs.
        nb.send(pid, "precious")
        task.cancel()
        assert await nb.receive(timeout=2) == ("cancelled", "precious")
