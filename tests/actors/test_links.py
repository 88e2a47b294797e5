"""Links: exit signals travel both ways along a link (docs/architecture.md "Processes")."""

from __future__ import annotations

import pytest
from actor_helpers import crash_on_message, dead_pid, stop_with, wait_forever

import numbeam as nb


async def link_then_wait(to: nb.Pid, other: nb.Pid) -> None:
    nb.link(other)
    nb.send(to, ("linked", nb.self()))
    await nb.receive()


async def trap_link_then_forward(to: nb.Pid, other: nb.Pid) -> None:
    nb.trap_exit(True)
    nb.link(other)
    nb.send(to, ("linked", nb.self()))
    nb.send(to, ("got", await nb.receive()))


async def test_crash_propagates_to_linked_process_with_the_reason() -> None:
    async with nb.Runtime():
        exc = ValueError("boom")
        crasher = nb.spawn(crash_on_message, exc)
        linked, ref = nb.spawn_monitor(link_then_wait, nb.self(), crasher)
        await nb.receive(tuple, timeout=2)
        nb.send(crasher, "go")
        down = await nb.receive(nb.Down, timeout=2)
        assert down.ref == ref and down.pid == linked
        assert down.reason is exc


async def test_link_is_bidirectional() -> None:
    async with nb.Runtime():
        target, target_ref = nb.spawn_monitor(wait_forever)
        linker = nb.spawn(link_then_wait, nb.self(), target)
        await nb.receive(tuple, timeout=2)
        nb.exit(linker, "boom")  # the side that called link dies: the target follows
        down = await nb.receive(nb.Down, timeout=2)
        assert down == nb.Down(target_ref, target, "boom")


async def test_crash_propagates_along_a_chain_of_links() -> None:
    async with nb.Runtime():
        exc = RuntimeError("end of the chain")
        c = nb.spawn(crash_on_message, exc)
        b = nb.spawn(link_then_wait, nb.self(), c)
        await nb.receive(tuple, timeout=2)
        a, _ = nb.spawn_monitor(link_then_wait, nb.self(), b)
        await nb.receive(tuple, timeout=2)
        nb.send(c, "go")
        down = await nb.receive(nb.Down, timeout=2)
        assert down.pid == a and down.reason is exc


async def test_normal_exit_does_not_kill_linked_process() -> None:
    async with nb.Runtime():
        quitter, quitter_ref = nb.spawn_monitor(crash_on_message, nb.Stop("normal"))
        linked = nb.spawn(link_then_wait, nb.self(), quitter)
        await nb.receive(tuple, timeout=2)
        nb.send(quitter, "go")
        assert await nb.receive(nb.Down, timeout=2) == nb.Down(quitter_ref, quitter, "normal")
        assert nb.is_alive(linked)
        assert nb.process_info(linked)["links"] == []


async def test_shutdown_exit_kills_non_trapping_linked_process() -> None:
    async with nb.Runtime():
        quitter = nb.spawn(crash_on_message, nb.Stop("shutdown"))
        linked, ref = nb.spawn_monitor(link_then_wait, nb.self(), quitter)
        await nb.receive(tuple, timeout=2)
        nb.send(quitter, "go")
        assert await nb.receive(nb.Down, timeout=2) == nb.Down(ref, linked, "shutdown")


async def test_trapping_process_gets_exit_message_instead_of_dying() -> None:
    async with nb.Runtime():
        exc = ValueError("boom")
        crasher = nb.spawn(crash_on_message, exc)
        trapper = nb.spawn(trap_link_then_forward, nb.self(), crasher)
        await nb.receive(timeout=2)
        nb.send(crasher, "go")
        tag, msg = await nb.receive(timeout=2)
        assert tag == "got"
        assert msg == nb.Exit(crasher, exc)
        assert msg.reason is exc
        assert nb.is_alive(trapper)


async def test_trapping_process_gets_exit_for_normal_exit_of_link() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        pid = nb.spawn_link(crash_on_message, nb.Stop("normal"))
        nb.send(pid, "go")
        assert await nb.receive(timeout=2) == nb.Exit(pid, "normal")


async def test_link_to_dead_pid_raises_noproc_when_not_trapping() -> None:
    async with nb.Runtime():
        pid = await dead_pid()
        with pytest.raises(nb.NoProc):
            nb.link(pid)
        assert nb.process_info(nb.self())["links"] == []


async def test_link_to_dead_pid_delivers_noproc_exit_when_trapping() -> None:
    async with nb.Runtime():
        pid = await dead_pid()
        nb.trap_exit(True)
        nb.link(pid)
        assert await nb.receive(timeout=0) == nb.Exit(pid, "noproc")


async def test_unlink_stops_propagation() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        pid = nb.spawn_link(crash_on_message, nb.Stop("boom"))
        nb.unlink(pid)
        ref = nb.monitor(pid)
        nb.send(pid, "go")
        assert await nb.receive(nb.Down, timeout=2) == nb.Down(ref, pid, "boom")
        with pytest.raises(TimeoutError):
            await nb.receive(nb.Exit, timeout=0)


async def test_unlink_removes_link_on_both_sides() -> None:
    async with nb.Runtime():
        pid = nb.spawn_link(wait_forever)
        nb.unlink(pid)
        assert nb.process_info(nb.self())["links"] == []
        assert nb.process_info(pid)["links"] == []


async def test_unlink_of_unlinked_pid_is_a_no_op() -> None:
    async with nb.Runtime():
        nb.unlink(nb.spawn(wait_forever))
        nb.unlink(await dead_pid())
        assert nb.process_info(nb.self())["links"] == []


async def test_linking_twice_makes_one_link() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever)
        nb.link(pid)
        nb.link(pid)
        assert nb.process_info(nb.self())["links"] == [pid]
        nb.unlink(pid)
        assert nb.process_info(nb.self())["links"] == []


async def test_link_to_self_is_a_no_op() -> None:
    async with nb.Runtime():
        nb.link(nb.self())
        assert nb.process_info(nb.self())["links"] == []


async def test_link_is_removed_when_linked_process_exits() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        pid = nb.spawn_link(stop_with, "done")
        assert await nb.receive(timeout=2) == nb.Exit(pid, "done")
        assert nb.process_info(nb.self())["links"] == []
