"""Supervisor client API: which_children, count_children, start_child, terminate_child,
restart_child, delete_child, and their error cases (OTP's running / restarting / not_found /
already_started / already_present)."""

from __future__ import annotations

from typing import Any

import pytest
from supervision_helpers import FailingInit, Gated, T, node, started, tagged

import numbeam as nb


class Worker(nb.GenServer):
    async def init(self, test: nb.Pid, id: str) -> None:
        nb.send(test, ("started", id, nb.self()))


def worker(id: str, restart: str = "permanent") -> nb.Child:
    return nb.Child(Worker, args=(nb.self(), id), id=id, restart=restart)  # type: ignore[arg-type]


async def start(*children: nb.Child, **flags: Any) -> tuple[nb.Pid, list[nb.Pid]]:
    sup = await nb.Supervisor.start_link(list(children), **flags)
    return sup, [await started(c.id) for c in children]  # type: ignore[arg-type]


# -- which_children / count_children -----------------------------------------------------------


async def test_which_children_lists_children_in_start_order_with_their_types():
    async with node():
        sub = nb.Child(nb.Supervisor, args=([],), id="sub")
        sup = await nb.Supervisor.start_link([worker("a"), sub, worker("b")])
        a, b = await started("a"), await started("b")
        children = await nb.Supervisor.which_children(sup)
        assert [(id, kind) for id, _, kind in children] == [
            ("a", "worker"),
            ("sub", "supervisor"),
            ("b", "worker"),
        ]
        assert children[0][1] == a and children[2][1] == b
        assert nb.is_alive(children[1][1])  # type: ignore[arg-type]


async def test_count_children_counts_specs_active_supervisors_and_workers():
    async with node():
        sub = nb.Child(nb.Supervisor, args=([],), id="sub")
        sup = await nb.Supervisor.start_link([worker("a"), sub, worker("b")])
        await nb.Supervisor.terminate_child(sup, "b")
        assert await nb.Supervisor.count_children(sup) == {
            "specs": 3,
            "active": 2,
            "supervisors": 1,
            "workers": 2,
        }


async def test_api_accepts_a_registered_name():
    async with node():
        sup = await nb.Supervisor.start_link([worker("a")], name="root")
        a = await started("a")
        assert nb.whereis("root") == sup
        assert await nb.Supervisor.which_children("root") == [("a", a, "worker")]
        await nb.Supervisor.terminate_child("root", "a")
        assert await nb.Supervisor.which_children("root") == [("a", None, "worker")]


# -- start_child ------------------------------------------------------------------------------


async def test_start_child_starts_a_new_child_last():
    async with node():
        sup, _ = await start(worker("a"))
        pid = await nb.Supervisor.start_child(sup, worker("b"))
        assert await started("b") == pid
        assert [id for id, _, _ in await nb.Supervisor.which_children(sup)] == ["a", "b"]


async def test_start_child_with_the_id_of_a_running_child_fails_already_started():
    async with node():
        sup, (a,) = await start(worker("a"))
        with pytest.raises(nb.StartError) as info:
            await nb.Supervisor.start_child(sup, worker("a"))
        assert info.value.reason == ("already_started", a)


async def test_start_child_with_the_id_of_a_terminated_child_fails_already_present():
    async with node():
        sup, _ = await start(worker("a"))
        await nb.Supervisor.terminate_child(sup, "a")
        with pytest.raises(nb.StartError) as info:
            await nb.Supervisor.start_child(sup, worker("a"))
        assert info.value.reason == "already_present"


async def test_start_child_that_fails_to_start_raises_start_error_and_is_not_added():
    async with node():
        sup, _ = await start(worker("a"))
        with pytest.raises(nb.StartError) as info:
            await nb.Supervisor.start_child(sup, nb.Child(FailingInit, id="bad"))
        assert info.value.reason == "cannot start"
        assert [id for id, _, _ in await nb.Supervisor.which_children(sup)] == ["a"]


async def test_start_child_rejects_what_is_not_a_child_spec():
    async with node():
        sup, _ = await start()
        with pytest.raises(TypeError, match=r"nb\.Child"):
            await nb.Supervisor.start_child(sup, Worker)  # type: ignore[arg-type]


# -- terminate_child ----------------------------------------------------------------------------


async def test_terminate_child_stops_it_and_keeps_its_spec():
    async with node():
        sup, (a,) = await start(worker("a"))
        ref = nb.monitor(a)
        await nb.Supervisor.terminate_child(sup, "a")
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=0)
        assert down.reason == "shutdown"
        assert await nb.Supervisor.which_children(sup) == [("a", None, "worker")]


async def test_terminated_child_is_not_restarted():
    async with node():
        sup, _ = await start(worker("a"))
        await nb.Supervisor.terminate_child(sup, "a")
        await nb.Supervisor.which_children(sup)
        with pytest.raises(TimeoutError):
            await nb.receive(tagged("started"), timeout=0)


async def test_terminate_child_of_a_terminated_child_is_fine():
    async with node():
        sup, _ = await start(worker("a"))
        await nb.Supervisor.terminate_child(sup, "a")
        await nb.Supervisor.terminate_child(sup, "a")
        assert await nb.Supervisor.which_children(sup) == [("a", None, "worker")]


async def test_terminate_child_of_a_temporary_child_deletes_its_spec():
    async with node():
        sup, _ = await start(worker("t", "temporary"), worker("a"))
        await nb.Supervisor.terminate_child(sup, "t")
        assert [id for id, _, _ in await nb.Supervisor.which_children(sup)] == ["a"]


async def test_terminate_child_with_an_unknown_id_raises_lookup_error():
    async with node():
        sup, _ = await start(worker("a"))
        with pytest.raises(LookupError, match="'nope'"):
            await nb.Supervisor.terminate_child(sup, "nope")


# -- restart_child ------------------------------------------------------------------------------


async def test_restart_child_starts_a_terminated_child_again():
    async with node():
        sup, (a,) = await start(worker("a"))
        await nb.Supervisor.terminate_child(sup, "a")
        pid = await nb.Supervisor.restart_child(sup, "a")
        assert await started("a") == pid != a
        assert await nb.Supervisor.which_children(sup) == [("a", pid, "worker")]


async def test_restart_child_of_a_running_child_fails():
    async with node():
        sup, (a,) = await start(worker("a"))
        with pytest.raises(ValueError, match="running"):
            await nb.Supervisor.restart_child(sup, "a")
        assert await nb.Supervisor.which_children(sup) == [("a", a, "worker")]


async def test_restart_child_with_an_unknown_id_raises_lookup_error():
    async with node():
        sup, _ = await start(worker("a"))
        with pytest.raises(LookupError):
            await nb.Supervisor.restart_child(sup, "nope")


async def test_restart_child_that_fails_to_start_raises_start_error():
    async with node():
        starts = await nb.Agent.start_link(lambda: 0)
        sup = await nb.Supervisor.start_link([nb.Child(Gated, args=(nb.self(), starts), id="g")])
        await started("g")
        await nb.Supervisor.terminate_child(sup, "g")
        test = nb.self()

        async def restarter() -> None:
            try:
                await nb.Supervisor.restart_child(sup, "g")
            except nb.StartError as e:
                nb.send(test, ("restart failed", e.reason))

        nb.spawn(restarter)
        nb.send((await nb.receive(tagged("init?"), timeout=T))[1], "fail")
        assert await nb.receive(tagged("restart failed"), timeout=T) == (
            "restart failed",
            "refused",
        )
        assert await nb.Supervisor.which_children(sup) == [("g", None, "worker")]


async def test_restart_child_while_it_is_being_restarted_fails_restarting():
    async with node():
        nb.trap_exit(True)
        starts = await nb.Agent.start_link(lambda: 0)
        sup = await nb.Supervisor.start_link([nb.Child(Gated, args=(nb.self(), starts), id="g")])
        g = await started("g")
        test = nb.self()

        async def restarter() -> None:
            nb.send(test, "calling")  # the call below is in the supervisor's mailbox at once
            try:
                await nb.Supervisor.restart_child(sup, "g")
            except ValueError as e:
                nb.send(test, ("refused", str(e)))

        nb.exit(g, "kill")
        attempt = (await nb.receive(tagged("init?"), timeout=T))[1]
        nb.spawn(restarter)  # while the supervisor waits in the restart
        await nb.receive(lambda m: m == "calling", timeout=T)
        nb.send(attempt, "fail")  # the restart fails: a retry is queued behind the call
        refused = await nb.receive(tagged("refused"), timeout=T)
        assert "being restarted" in refused[1]
        nb.send((await nb.receive(tagged("init?"), timeout=T))[1], "ok")
        new = await started("g")
        assert await nb.Supervisor.which_children(sup) == [("g", new, "worker")]


# -- delete_child -------------------------------------------------------------------------------


async def test_delete_child_removes_a_terminated_child():
    async with node():
        sup, _ = await start(worker("a"), worker("b"))
        await nb.Supervisor.terminate_child(sup, "a")
        await nb.Supervisor.delete_child(sup, "a")
        assert [id for id, _, _ in await nb.Supervisor.which_children(sup)] == ["b"]
        pid = await nb.Supervisor.start_child(sup, worker("a"))  # the id is free again
        assert await started("a") == pid


async def test_delete_child_of_a_running_child_fails():
    async with node():
        sup, (a,) = await start(worker("a"))
        with pytest.raises(ValueError, match="terminate_child first"):
            await nb.Supervisor.delete_child(sup, "a")
        assert await nb.Supervisor.which_children(sup) == [("a", a, "worker")]


async def test_delete_child_with_an_unknown_id_raises_lookup_error():
    async with node():
        sup, _ = await start(worker("a"))
        with pytest.raises(LookupError):
            await nb.Supervisor.delete_child(sup, "nope")


async def test_api_on_a_dead_supervisor_raises_noproc():
    async with node():
        sup = await nb.Supervisor.start([])
        await nb.stop(sup)
        with pytest.raises(nb.NoProc):
            await nb.Supervisor.which_children(sup)
