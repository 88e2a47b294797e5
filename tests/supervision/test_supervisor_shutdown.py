"""How a supervisor stops children: shutdown seconds, brutal_kill, infinity, nested trees,
the parent's exit signal, and a failed start.

Children report to the test process; see test_supervisor_restarts.py for the pattern.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from supervision_helpers import ReportingWorker, T, is_report, node, reports, started

import numbeam as nb


class FailingInit(nb.GenServer):
    async def init(self) -> None:
        raise ValueError("cannot start")


async def stubborn(test: nb.Pid, id: str) -> None:
    """Traps exits and ignores them: only "kill" stops it. Reports what it gets."""
    nb.trap_exit(True)
    nb.send(test, ("started", id, nb.self()))
    while True:
        nb.send(test, ("got", id, await nb.receive()))


async def slow_to_stop(test: nb.Pid, id: str) -> None:
    """On "shutdown" it reports ("stopping", id), then exits once the test says "finish"."""
    nb.trap_exit(True)
    nb.send(test, ("started", id, nb.self()))
    signal = await nb.receive(nb.Exit)
    nb.send(test, ("stopping", id))
    await nb.receive(lambda m: m == "finish")
    raise nb.Stop(signal.reason)


def worker(id: str) -> nb.Child:
    return nb.Child(ReportingWorker, args=(nb.self(), id), id=id)


async def down(ref: nb.Ref) -> nb.Down:
    return await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)


# -- a child's shutdown ---------------------------------------------------------------------


async def test_shutdown_timeout_kills_a_child_that_ignores_shutdown():
    async with node():
        spec = nb.Child(stubborn, args=(nb.self(), "s"), id="s", shutdown=0.1)
        sup = await nb.Supervisor.start_link([spec])
        pid = await started("s")
        ref = nb.monitor(pid)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await nb.Supervisor.terminate_child(sup, "s")
        assert loop.time() - t0 >= 0.1
        assert (await down(ref)).reason == "killed"
        got = await nb.receive(lambda m: type(m) is tuple and m[0] == "got", timeout=0)
        assert got[2] == nb.Exit(sup, "shutdown")  # it was asked first, and ignored it


async def test_brutal_kill_kills_the_child_at_once():
    async with node():
        spec = nb.Child(stubborn, args=(nb.self(), "s"), id="s", shutdown="brutal_kill")
        sup = await nb.Supervisor.start_link([spec])
        pid = await started("s")
        ref = nb.monitor(pid)
        await nb.Supervisor.terminate_child(sup, "s")
        assert (await down(ref)).reason == "killed"
        with pytest.raises(TimeoutError):  # never asked to shut down: no Exit reached it
            await nb.receive(lambda m: type(m) is tuple and m[0] == "got", timeout=0)


async def test_infinity_waits_for_a_trapping_child_to_finish():
    async with node():
        test = nb.self()
        spec = nb.Child(slow_to_stop, args=(test, "s"), id="s", shutdown="infinity")
        sup = await nb.Supervisor.start_link([spec])
        pid = await started("s")
        ref = nb.monitor(pid)

        async def terminator() -> None:
            await nb.Supervisor.terminate_child(sup, "s")
            nb.send(test, "terminated")

        nb.spawn(terminator)
        await nb.receive(lambda m: m == ("stopping", "s"), timeout=T)
        with pytest.raises(TimeoutError):  # terminate_child still waits for the child
            await nb.receive(lambda m: m == "terminated", timeout=0)
        nb.send(pid, "finish")
        assert (await down(ref)).reason == "shutdown"
        await nb.receive(lambda m: m == "terminated", timeout=T)


async def test_supervisor_child_defaults_to_infinity_and_finishes_its_own_shutdown():
    async with node():
        test = nb.self()
        inner = [nb.Child(slow_to_stop, args=(test, "s"), id="s", shutdown="infinity")]
        root = await nb.Supervisor.start_link([nb.Child(nb.Supervisor, args=(inner,), id="sub")])
        pid = await started("s")
        ref = nb.monitor(pid)

        async def terminator() -> None:
            await nb.Supervisor.terminate_child(root, "sub")
            nb.send(test, "terminated")

        nb.spawn(terminator)
        await nb.receive(lambda m: m == ("stopping", "s"), timeout=T)
        nb.send(pid, "finish")
        assert (await down(ref)).reason == "shutdown"
        await nb.receive(lambda m: m == "terminated", timeout=T)
        assert await nb.Supervisor.which_children(root) == [("sub", None, "supervisor")]


# -- stopping a tree --------------------------------------------------------------------------


async def test_exit_signal_from_the_parent_stops_children_in_reverse_order():
    async with node():
        nb.trap_exit(True)
        sup = await nb.Supervisor.start_link([worker("a"), worker("b"), worker("c")])
        assert await reports(3) == [("started", "a"), ("started", "b"), ("started", "c")]
        ref = nb.monitor(sup)
        nb.exit(sup, "shutdown")
        assert (await down(ref)).reason == "shutdown"
        assert await reports(3) == [("stopped", "c"), ("stopped", "b"), ("stopped", "a")]


async def test_nested_supervisor_stops_its_children_in_order_when_its_parent_stops():
    async with node():
        nb.trap_exit(True)
        grandchildren = [worker("a"), worker("b")]
        root = await nb.Supervisor.start_link(
            [
                nb.Child(
                    nb.Supervisor,
                    args=(grandchildren,),
                    kwargs={"strategy": "one_for_all"},
                    id="sub",
                ),
                worker("c"),
            ]
        )
        assert await reports(3) == [("started", "a"), ("started", "b"), ("started", "c")]
        children = await nb.Supervisor.which_children(root)
        assert [(id, kind) for id, _, kind in children] == [("sub", "supervisor"), ("c", "worker")]
        sub = children[0][1]
        assert sub is not None
        assert [id for id, _, _ in await nb.Supervisor.which_children(sub)] == ["a", "b"]
        sub_ref = nb.monitor(sub)
        await nb.stop(root)
        assert await reports(3) == [("stopped", "c"), ("stopped", "b"), ("stopped", "a")]
        assert (await down(sub_ref)).reason == "shutdown"


async def test_runtime_shutdown_stops_a_supervision_tree_in_order():
    stopped: list[tuple[str, Any]] = []  # the node is gone when we read it: no mailbox then

    class Recorder(nb.GenServer):
        async def init(self, id: str) -> None:
            self.id = id
            nb.trap_exit(True)

        async def terminate(self, reason: Any) -> None:
            stopped.append((self.id, reason))

    def rec(id: str) -> nb.Child:
        return nb.Child(Recorder, args=(id,), id=id)

    async with node():
        await nb.Supervisor.start_link(
            [nb.Child(nb.Supervisor, args=([rec("a"), rec("b")],), id="sub"), rec("c")]
        )
    assert stopped == [("c", "shutdown"), ("b", "shutdown"), ("a", "shutdown")]


# -- a failed start -------------------------------------------------------------------------


async def test_start_failure_raises_start_error_and_stops_the_started_children():
    async with node():
        children = [worker("a"), worker("b"), nb.Child(FailingInit, id="bad"), worker("c")]
        with pytest.raises(nb.StartError) as info:
            await nb.Supervisor.start_link(children)
        tag, (what, id, reason) = info.value.reason
        assert (tag, what, id) == ("shutdown", "failed_to_start_child", "bad")
        assert isinstance(reason, ValueError)
        events = [await nb.receive(is_report, timeout=T) for _ in range(4)]
        a, b = events[0][2], events[1][2]
        # Stopped one by one by the supervisor, in reverse order, with "shutdown".
        assert events == [
            ("started", "a", a),
            ("started", "b", b),
            ("stopped", "b", "shutdown"),
            ("stopped", "a", "shutdown"),
        ]
        assert not nb.is_alive(a) and not nb.is_alive(b)
        with pytest.raises(TimeoutError):  # c was never started
            await nb.receive(is_report, timeout=0)


async def test_start_failure_does_not_kill_the_caller():
    async with node():
        with pytest.raises(nb.StartError):
            await nb.Supervisor.start_link([nb.Child(FailingInit)])
        assert nb.process_info(nb.self())["links"] == []  # type: ignore[index]


# -- reports ----------------------------------------------------------------------------------


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, Any, int]]:
    return [
        (r.numbeam_event, r.numbeam_child_id, r.levelno)  # type: ignore[attr-defined]
        for r in caplog.records
        if hasattr(r, "numbeam_event")
    ]


async def test_a_crash_is_reported_as_child_terminated_then_restarted(caplog):
    caplog.set_level(logging.INFO, logger="numbeam")
    async with node():
        nb.trap_exit(True)
        sup = await nb.Supervisor.start_link([worker("a")], name="root")
        a = await started("a")
        ref = nb.monitor(a)
        nb.exit(a, "kill")
        await down(ref)
        await started("a")
        await nb.Supervisor.which_children(sup)  # answered once the restart is done
        assert events(caplog) == [
            ("child_terminated", "a", logging.ERROR),
            ("restarted", "a", logging.INFO),
        ]
        first = next(r for r in caplog.records if hasattr(r, "numbeam_event"))
        assert (
            first.getMessage() == f"supervisor root: child 'a' exited (pid={a!r}, reason='killed')"
        )
        assert first.numbeam_supervisor == "root"  # type: ignore[attr-defined]


async def test_reaching_the_restart_intensity_is_reported(caplog):
    caplog.set_level(logging.INFO, logger="numbeam")
    async with node():
        sup = await nb.Supervisor.start([worker("a")], intensity=0)
        ref = nb.monitor(sup)
        nb.exit(await started("a"), "kill")
        await down(ref)
        assert ("reached_max_restart_intensity", None, logging.ERROR) in events(caplog)


async def test_a_child_that_exits_with_another_reason_on_shutdown_is_reported(caplog):
    async def odd(test: nb.Pid) -> None:
        nb.trap_exit(True)
        nb.send(test, ("started", "odd", nb.self()))
        await nb.receive(nb.Exit)
        raise nb.Stop("oops")

    caplog.set_level(logging.INFO, logger="numbeam")
    async with node():
        sup = await nb.Supervisor.start_link([nb.Child(odd, args=(nb.self(),), id="odd")])
        await started("odd")
        await nb.Supervisor.terminate_child(sup, "odd")
        assert events(caplog) == [("shutdown_error", "odd", logging.ERROR)]
        record = next(r for r in caplog.records if hasattr(r, "numbeam_event"))
        assert record.numbeam_reason == "oops"  # type: ignore[attr-defined]
