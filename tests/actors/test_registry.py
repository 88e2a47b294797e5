"""Local names: register, unregister, whereis, registered (docs/architecture.md "Processes")."""

from __future__ import annotations

import pytest
from actor_helpers import exit_at_once, exit_on_message, wait_forever

import numbeam as nb


async def test_register_then_whereis_returns_the_pid() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever)
        nb.register("svc", pid)
        assert nb.whereis("svc") == pid


async def test_whereis_of_unknown_name_is_none() -> None:
    async with nb.Runtime():
        assert nb.whereis("nobody") is None


async def test_registered_lists_all_names() -> None:
    async with nb.Runtime():
        nb.register("a", nb.spawn(wait_forever))
        nb.spawn(wait_forever, name="b")
        nb.register("shell", nb.self())
        assert sorted(nb.registered()) == ["a", "b", "shell"]


async def test_unregister_frees_the_name() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever)
        nb.register("svc", pid)
        nb.unregister("svc")
        assert nb.whereis("svc") is None
        assert nb.registered() == []
        assert nb.process_info(pid)["registered_name"] is None
        assert nb.is_alive(pid)


async def test_unregister_of_unknown_name_raises_value_error() -> None:
    async with nb.Runtime():
        with pytest.raises(ValueError, match="nobody"):
            nb.unregister("nobody")


async def test_name_is_freed_when_its_process_exits() -> None:
    async with nb.Runtime():
        pid, _ = nb.spawn_monitor(exit_on_message)
        nb.register("svc", pid)
        nb.send("svc", "go")
        await nb.receive(nb.Down, timeout=2)
        assert nb.whereis("svc") is None
        assert "svc" not in nb.registered()


async def test_name_can_be_reused_after_its_process_exits() -> None:
    async with nb.Runtime():
        first, _ = nb.spawn_monitor(exit_on_message)
        nb.register("svc", first)
        nb.send("svc", "go")
        await nb.receive(lambda m: type(m) is nb.Down and m.pid == first, timeout=2)
        second = nb.spawn(wait_forever, name="svc")
        assert nb.whereis("svc") == second


async def test_send_to_name_of_exited_process_raises_noproc() -> None:
    async with nb.Runtime():
        pid, _ = nb.spawn_monitor(exit_on_message)
        nb.register("svc", pid)
        nb.send("svc", "go")
        await nb.receive(nb.Down, timeout=2)
        with pytest.raises(nb.NoProc):
            nb.send("svc", "anyone?")


async def test_register_taken_name_raises_value_error() -> None:
    async with nb.Runtime():
        nb.register("svc", nb.spawn(wait_forever))
        other = nb.spawn(wait_forever)
        with pytest.raises(ValueError, match="svc"):
            nb.register("svc", other)
        assert nb.process_info(other)["registered_name"] is None


async def test_spawn_with_taken_name_raises_value_error_and_spawns_nothing() -> None:
    async with nb.Runtime():
        nb.spawn(wait_forever, name="svc")
        before = set(nb.processes())
        with pytest.raises(ValueError, match="svc"):
            nb.spawn(wait_forever, name="svc")
        assert set(nb.processes()) == before


async def test_register_second_name_for_same_process_raises_value_error() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever, name="first")
        with pytest.raises(ValueError, match="first"):
            nb.register("second", pid)
        assert nb.whereis("second") is None


async def test_register_non_pid_raises_type_error() -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="Pid"):
            nb.register("svc", "not a pid")  # type: ignore[arg-type]
        assert nb.registered() == []


@pytest.mark.parametrize("name", ["", 42, None, ("a", "b")])
async def test_register_bad_name_raises_type_error(name: object) -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="name"):
            nb.register(name, nb.self())  # type: ignore[arg-type]


async def test_register_dead_pid_raises_value_error() -> None:
    async with nb.Runtime():
        pid, _ = nb.spawn_monitor(exit_at_once)
        await nb.receive(nb.Down, timeout=2)
        with pytest.raises(ValueError, match="not a live process"):
            nb.register("svc", pid)
        assert nb.whereis("svc") is None


async def test_registered_name_shows_in_process_info() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever, name="svc")
        assert nb.process_info(pid)["registered_name"] == "svc"
