"""Supervisor start order, strategies, restart types and intensity (OTP's supervisor_SUITE).

Children report to the test process: ("started", id, pid) from init and, since they trap
exits, ("stopped", id, reason) from terminate. A child is made to exit by a cast that raises
`nb.Stop(reason)`; the test monitors it and waits for its Down, by which time the supervisor
has its Exit. A synchronous call to the supervisor afterwards is answered only once that
Exit has been handled, so "no restart happened" is checked without waiting for time.
"""

from __future__ import annotations

from typing import Any

import pytest
from supervision_helpers import ReportingWorker, T, is_report, node, reports, started

import numbeam as nb


class Worker(ReportingWorker):
    """Crashes on the "crash" cast; stops with `reason` on ("stop", reason)."""

    async def handle_cast(self, request: Any) -> None:
        if request == "crash":
            raise RuntimeError(f"{self.id} crashed on purpose")
        raise nb.Stop(request[1])  # ("stop", reason)


class Gated(nb.GenServer):
    """Starts the first time; on restarts, its init asks the test ("init?", id, pid) and
    starts only if the answer is "ok". `starts` is an Agent counting the starts."""

    async def init(self, test: nb.Pid, id: str, starts: nb.Pid) -> None:
        if await nb.Agent.get_and_update(starts, lambda n: (n, n + 1)) > 0:
            nb.send(test, ("init?", id, nb.self()))
            if await nb.receive(lambda m: m in ("ok", "fail"), timeout=T) == "fail":
                raise nb.Stop("refused")
        nb.send(test, ("started", id, nb.self()))


async def gated(id: str) -> nb.Child:
    starts = await nb.Agent.start_link(lambda: 0)
    return nb.Child(Gated, args=(nb.self(), id, starts), id=id)


async def init_asked() -> nb.Pid:
    return (await nb.receive(lambda m: type(m) is tuple and m[0] == "init?", timeout=T))[2]


def child(id: str, restart: str = "permanent") -> nb.Child:
    return nb.Child(Worker, args=(nb.self(), id), id=id, restart=restart)  # type: ignore[arg-type]


async def exit_child(pid: nb.Pid, reason: Any) -> None:
    """Make the child exit with `reason` and wait until it is gone."""
    ref = nb.monitor(pid)
    nb.cast(pid, "crash" if reason == "crash" else ("stop", reason))
    await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)


async def assert_no_report() -> None:
    with pytest.raises(TimeoutError):
        await nb.receive(is_report, timeout=0)


async def start(children: list[nb.Child], **flags: Any) -> tuple[nb.Pid, dict[str, nb.Pid]]:
    sup = await nb.Supervisor.start_link(children, **flags)
    pids = {c.id: await started(c.id) for c in children}  # type: ignore[misc]
    return sup, pids  # type: ignore[return-value]


async def pids_of(sup: nb.Pid) -> dict[Any, nb.Pid | None]:
    return {id: pid for id, pid, _ in await nb.Supervisor.which_children(sup)}


# -- order ------------------------------------------------------------------------------------


async def test_children_start_in_list_order():
    async with node():
        nb.trap_exit(True)
        await nb.Supervisor.start_link([child("a"), child("b"), child("c")])
        assert await reports(3) == [("started", "a"), ("started", "b"), ("started", "c")]


async def test_children_stop_in_reverse_order():
    async with node():
        nb.trap_exit(True)
        sup, _ = await start([child("a"), child("b"), child("c")])
        await nb.stop(sup, "shutdown")
        assert await reports(3) == [("stopped", "c"), ("stopped", "b"), ("stopped", "a")]


# -- strategies ---------------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_failed_child():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a"), child("b"), child("c")], strategy="one_for_one")
        await exit_child(pids["b"], "boom")
        assert await reports(2) == [("stopped", "b"), ("started", "b")]
        now = await pids_of(sup)
        assert now["a"] == pids["a"] and now["c"] == pids["c"]
        assert now["b"] not in (None, pids["b"]) and nb.is_alive(now["b"])
        await assert_no_report()


async def test_one_for_all_restarts_all_children():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a"), child("b"), child("c")], strategy="one_for_all")
        await exit_child(pids["b"], "boom")
        assert await reports(6) == [
            ("stopped", "b"),
            ("stopped", "c"),
            ("stopped", "a"),
            ("started", "a"),
            ("started", "b"),
            ("started", "c"),
        ]
        now = await pids_of(sup)
        assert all(now[id] != pids[id] and nb.is_alive(now[id]) for id in "abc")  # type: ignore[arg-type]


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a"), child("b"), child("c")], strategy="rest_for_one")
        await exit_child(pids["b"], "boom")
        assert await reports(4) == [
            ("stopped", "b"),
            ("stopped", "c"),
            ("started", "b"),
            ("started", "c"),
        ]
        now = await pids_of(sup)
        assert now["a"] == pids["a"]
        assert now["b"] != pids["b"] and now["c"] != pids["c"]
        await assert_no_report()


async def test_one_for_all_removes_a_temporary_sibling_instead_of_restarting_it():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a"), child("t", "temporary")], strategy="one_for_all")
        await exit_child(pids["a"], "boom")
        assert await reports(3) == [("stopped", "a"), ("stopped", "t"), ("started", "a")]
        assert [id for id, _, _ in await nb.Supervisor.which_children(sup)] == ["a"]
        assert not nb.is_alive(pids["t"])


async def test_crashed_child_is_restarted():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a")])
        await exit_child(pids["a"], "crash")
        new = await started("a")
        assert new != pids["a"]
        assert (await pids_of(sup))["a"] == new


async def test_function_child_is_spawned_linked_and_restarted():
    async def fn_worker(test: nb.Pid, tag: str, *, suffix: str) -> None:
        nb.send(test, ("started", tag + suffix, nb.self()))
        raise nb.Stop(await nb.receive(timeout=T))

    async with node():
        nb.trap_exit(True)
        spec = nb.Child(fn_worker, args=(nb.self(), "f"), kwargs={"suffix": "n"})
        sup = await nb.Supervisor.start_link([spec])
        pid = await started("fn")
        assert sup in nb.process_info(pid)["links"]  # type: ignore[index]
        ref = nb.monitor(pid)
        nb.send(pid, "boom")
        await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        new = await started("fn")
        assert new != pid
        assert await nb.Supervisor.which_children(sup) == [("fn_worker", new, "worker")]


# -- restart types --------------------------------------------------------------------------


async def test_permanent_normal_exit_is_restarted():
    async with node():
        nb.trap_exit(True)
        _, pids = await start([child("a", "permanent")])
        await exit_child(pids["a"], "normal")
        assert await started("a") != pids["a"]


async def test_transient_normal_exit_is_not_restarted():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a", "transient")])
        await exit_child(pids["a"], "normal")
        assert await nb.Supervisor.which_children(sup) == [("a", None, "worker")]
        assert await reports(1) == [("stopped", "a")]
        await assert_no_report()


async def test_transient_shutdown_exit_is_not_restarted():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a", "transient")])
        await exit_child(pids["a"], "shutdown")
        assert await nb.Supervisor.which_children(sup) == [("a", None, "worker")]


async def test_transient_shutdown_tuple_exit_is_not_restarted():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a", "transient")])
        await exit_child(pids["a"], ("shutdown", "job done"))
        assert await nb.Supervisor.which_children(sup) == [("a", None, "worker")]
        assert await reports(1) == [("stopped", "a")]
        await assert_no_report()


async def test_transient_abnormal_exit_is_restarted():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a", "transient")])
        await exit_child(pids["a"], "boom")
        new = await started("a")
        assert new != pids["a"]
        assert await nb.Supervisor.which_children(sup) == [("a", new, "worker")]


async def test_temporary_abnormal_exit_is_not_restarted_and_its_spec_is_removed():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a", "temporary"), child("b")])
        await exit_child(pids["a"], "boom")
        assert [id for id, _, _ in await nb.Supervisor.which_children(sup)] == ["b"]
        assert await reports(1) == [("stopped", "a")]
        await assert_no_report()


async def test_temporary_normal_exit_is_not_restarted_and_its_spec_is_removed():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a", "temporary")])
        await exit_child(pids["a"], "normal")
        assert await nb.Supervisor.which_children(sup) == []


# -- restart intensity ----------------------------------------------------------------------


async def test_restarts_within_the_intensity_keep_the_supervisor_running():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a")], intensity=2, period=60.0)
        pid = pids["a"]
        for _ in range(2):
            await exit_child(pid, "boom")
            pid = await started("a")
        assert nb.is_alive(sup)
        assert (await pids_of(sup))["a"] == pid


async def test_restart_intensity_exceeded_stops_the_children_and_exits_shutdown():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a"), child("b")], intensity=1, period=60.0)
        ref = nb.monitor(sup)
        await exit_child(pids["a"], "boom")
        a2 = await started("a")
        await exit_child(a2, "boom")
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "shutdown"
        assert await nb.receive(nb.Exit, timeout=T) == nb.Exit(sup, "shutdown")
        assert not nb.is_alive(pids["b"])
        assert await reports(3) == [("stopped", "a"), ("stopped", "a"), ("stopped", "b")]
        await assert_no_report()


async def test_zero_intensity_gives_up_at_the_first_restart():
    async with node():
        nb.trap_exit(True)
        sup, pids = await start([child("a")], intensity=0)
        ref = nb.monitor(sup)
        await exit_child(pids["a"], "boom")
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "shutdown"
        assert await reports(1) == [("stopped", "a")]
        await assert_no_report()


async def test_failed_restart_is_retried_until_the_child_starts():
    async with node():
        nb.trap_exit(True)
        sup = await nb.Supervisor.start_link([await gated("g")])
        await exit_child(await started("g"), "boom")
        nb.send(await init_asked(), "fail")  # the restart fails: the supervisor tries again
        nb.send(await init_asked(), "ok")
        new = await started("g")
        assert await nb.Supervisor.which_children(sup) == [("g", new, "worker")]


async def test_failed_restarts_count_toward_the_intensity():
    async with node():
        nb.trap_exit(True)
        sup = await nb.Supervisor.start_link([await gated("g")], intensity=1)
        ref = nb.monitor(sup)
        await exit_child(await started("g"), "boom")
        nb.send(await init_asked(), "fail")
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "shutdown"
        with pytest.raises(TimeoutError):  # the second restart was never attempted
            await nb.receive(lambda m: type(m) is tuple and m[0] == "init?", timeout=0)
