"""DynamicSupervisor: start_child, max_children, terminate_child, restarts and shutdown."""

from __future__ import annotations

from typing import Any

import pytest
from supervision_helpers import (
    FailingInit,
    Gated,
    ReportingWorker,
    T,
    is_report,
    node,
    started,
    tagged,
)

import numbeam as nb


class Worker(ReportingWorker):
    """Stops with the reason it is cast."""

    async def handle_cast(self, request: Any) -> None:
        raise nb.Stop(request)


def worker(id: str, restart: str = "permanent") -> nb.Child:
    return nb.Child(Worker, args=(nb.self(), id), id=id, restart=restart)  # type: ignore[arg-type]


async def exit_child(pid: nb.Pid, reason: Any) -> None:
    ref = nb.monitor(pid)
    nb.cast(pid, reason)
    await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)


async def test_start_child_returns_the_pid_of_a_running_child():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        pid = await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        assert await started("a") == pid
        assert dyn in nb.process_info(pid)["links"]  # type: ignore[index]


async def test_which_children_and_count_children():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        sub = await nb.DynamicSupervisor.start_child(dyn, nb.Child(nb.Supervisor, args=([],)))
        assert await nb.DynamicSupervisor.which_children(dyn) == [
            (None, a, "worker"),
            (None, sub, "supervisor"),
        ]
        assert await nb.DynamicSupervisor.count_children(dyn) == {
            "specs": 2,
            "active": 2,
            "supervisors": 1,
            "workers": 1,
        }


async def test_start_child_past_max_children_raises_start_error():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link(max_children=2)
        await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        await nb.DynamicSupervisor.start_child(dyn, worker("b"))
        with pytest.raises(nb.StartError, match="max_children=2") as info:
            await nb.DynamicSupervisor.start_child(dyn, worker("c"))
        assert info.value.reason == "max_children"
        assert (await nb.DynamicSupervisor.count_children(dyn))["specs"] == 2
        with pytest.raises(TimeoutError):  # c was never started
            await nb.receive(lambda m: is_report(m) and m[1] == "c", timeout=0)


async def test_terminated_child_frees_a_place_under_max_children():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link(max_children=1)
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        await nb.DynamicSupervisor.terminate_child(dyn, a)
        b = await nb.DynamicSupervisor.start_child(dyn, worker("b"))
        assert await nb.DynamicSupervisor.which_children(dyn) == [(None, b, "worker")]


async def test_start_child_that_fails_to_start_raises_start_error():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        with pytest.raises(nb.StartError) as info:
            await nb.DynamicSupervisor.start_child(dyn, nb.Child(FailingInit))
        assert info.value.reason == "cannot start"
        assert await nb.DynamicSupervisor.which_children(dyn) == []


async def test_terminate_child_stops_and_forgets_the_child():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        await nb.DynamicSupervisor.terminate_child(dyn, a)
        assert await nb.receive(is_report, timeout=T) == ("started", "a", a)
        assert await nb.receive(is_report, timeout=T) == ("stopped", "a", "shutdown")
        assert not nb.is_alive(a)
        assert await nb.DynamicSupervisor.which_children(dyn) == []
        with pytest.raises(TimeoutError):  # and it is not restarted
            await nb.receive(is_report, timeout=0)


async def test_terminate_child_of_an_unknown_pid_raises_lookup_error():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        with pytest.raises(LookupError):
            await nb.DynamicSupervisor.terminate_child(dyn, nb.self())


async def test_crashed_permanent_child_is_restarted():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        await started("a")
        await exit_child(a, "boom")
        new = await started("a")
        assert new != a
        assert await nb.DynamicSupervisor.which_children(dyn) == [(None, new, "worker")]


async def test_transient_child_that_exits_normally_is_not_restarted():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a", "transient"))
        await started("a")
        await exit_child(a, "normal")
        assert await nb.DynamicSupervisor.which_children(dyn) == []
        with pytest.raises(TimeoutError):
            await nb.receive(lambda m: is_report(m) and m[0] == "started", timeout=0)


async def test_temporary_child_is_not_restarted():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a", "temporary"))
        await started("a")
        await exit_child(a, "boom")
        assert await nb.DynamicSupervisor.count_children(dyn) == {
            "specs": 0,
            "active": 0,
            "supervisors": 0,
            "workers": 0,
        }
        with pytest.raises(TimeoutError):
            await nb.receive(lambda m: is_report(m) and m[0] == "started", timeout=0)


async def test_restart_intensity_exceeded_stops_all_children_and_exits_shutdown():
    async with node():
        dyn = await nb.DynamicSupervisor.start(intensity=1, period=60.0)
        ref = nb.monitor(dyn)
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        b = await nb.DynamicSupervisor.start_child(dyn, worker("b"))
        assert await started("a") == a
        await exit_child(a, "boom")
        await exit_child(await started("a"), "boom")
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "shutdown"
        assert not nb.is_alive(b)


async def test_stopping_it_stops_all_children():
    async with node():
        dyn = await nb.DynamicSupervisor.start_link(name="pool")
        pids = [await nb.DynamicSupervisor.start_child("pool", worker(id)) for id in "abc"]
        refs = [nb.monitor(pid) for pid in pids]
        await nb.stop(dyn)
        for ref in refs:
            down = await nb.receive(lambda m, r=ref: type(m) is nb.Down and m.ref == r, timeout=0)
            assert down.reason == "shutdown"


async def test_stopping_it_kills_a_child_past_its_shutdown_time():
    async def stubborn(test: nb.Pid) -> None:
        nb.trap_exit(True)
        nb.send(test, ("started", "s", nb.self()))
        while True:
            await nb.receive()

    async with node():
        dyn = await nb.DynamicSupervisor.start_link()
        spec = nb.Child(stubborn, args=(nb.self(),), shutdown=0.05)
        s = await nb.DynamicSupervisor.start_child(dyn, spec)
        a = await nb.DynamicSupervisor.start_child(dyn, worker("a"))
        s_ref, a_ref = nb.monitor(s), nb.monitor(a)
        await nb.stop(dyn)
        assert (
            await nb.receive(lambda m: type(m) is nb.Down and m.ref == a_ref, timeout=0)
        ).reason == "shutdown"
        assert (
            await nb.receive(lambda m: type(m) is nb.Down and m.ref == s_ref, timeout=0)
        ).reason == "killed"


async def test_failed_restart_is_retried_and_the_child_keeps_its_place_meanwhile():
    async with node():
        test = nb.self()
        dyn = await nb.DynamicSupervisor.start_link(max_children=1)
        starts = await nb.Agent.start_link(lambda: 0)
        g = await nb.DynamicSupervisor.start_child(dyn, nb.Child(Gated, args=(test, starts)))
        await started("g")

        async def which() -> None:
            nb.send(test, "calling")  # the call below is in the supervisor's mailbox at once
            nb.send(test, ("seen", await nb.DynamicSupervisor.which_children(dyn)))

        async def add() -> None:
            nb.send(test, "calling")
            try:
                await nb.DynamicSupervisor.start_child(dyn, worker("x"))
            except nb.StartError as e:
                nb.send(test, ("refused", e.reason))

        await exit_child(g, "boom")
        attempt = (await nb.receive(tagged("init?"), timeout=T))[1]
        for helper in (which, add):  # while the supervisor waits in the restart
            nb.spawn(helper)
            await nb.receive(lambda m: m == "calling", timeout=T)
        nb.send(attempt, "fail")  # the retry is queued behind both calls
        assert await nb.receive(tagged("seen"), timeout=T) == ("seen", [(None, None, "worker")])
        assert await nb.receive(tagged("refused"), timeout=T) == ("refused", "max_children")
        nb.send((await nb.receive(tagged("init?"), timeout=T))[1], "ok")
        new = await started("g")
        assert await nb.DynamicSupervisor.which_children(dyn) == [(None, new, "worker")]
