"""is_alive, processes and process_info (docs/architecture.md "Processes")."""

from __future__ import annotations

from actor_helpers import dead_pid, wait_forever

import numbeam as nb


async def report_info(to: nb.Pid) -> None:
    nb.send(to, nb.process_info(nb.self()))
    await nb.receive()


async def test_is_alive_is_true_for_live_process() -> None:
    async with nb.Runtime():
        assert nb.is_alive(nb.spawn(wait_forever))
        assert nb.is_alive(nb.self())


async def test_is_alive_is_false_after_exit() -> None:
    async with nb.Runtime():
        assert not nb.is_alive(await dead_pid())


async def test_processes_lists_live_processes() -> None:
    async with nb.Runtime():
        a = nb.spawn(wait_forever)
        b = nb.spawn(wait_forever)
        assert set(nb.processes()) == {nb.self(), a, b}


async def test_processes_drops_exited_processes() -> None:
    async with nb.Runtime():
        dead = await dead_pid()
        assert dead not in nb.processes()
        assert nb.processes() == [nb.self()]


async def test_process_info_has_the_documented_keys() -> None:
    async with nb.Runtime():
        info = nb.process_info(nb.spawn(wait_forever))
        assert info is not None
        assert {
            "status",
            "message_queue_len",
            "links",
            "monitors",
            "registered_name",
            "trap_exit",
        } <= set(info)


async def test_process_info_of_dead_pid_is_none() -> None:
    async with nb.Runtime():
        assert nb.process_info(await dead_pid()) is None


async def test_process_info_of_fresh_process_is_empty() -> None:
    async with nb.Runtime():
        info = nb.process_info(nb.spawn(wait_forever))
        assert info["message_queue_len"] == 0
        assert info["links"] == []
        assert info["monitors"] == []
        assert info["registered_name"] is None
        assert info["trap_exit"] is False


async def test_process_info_message_queue_len_counts_unread_messages() -> None:
    async with nb.Runtime():
        pid = nb.spawn(wait_forever)
        for i in range(3):
            nb.send(nb.self(), i)
        nb.send(pid, "x")
        assert nb.process_info(nb.self())["message_queue_len"] == 3
        assert nb.process_info(pid)["message_queue_len"] == 1
        await nb.receive(timeout=0)
        assert nb.process_info(nb.self())["message_queue_len"] == 2


async def test_process_info_shows_links_monitors_name_and_trap_exit() -> None:
    async with nb.Runtime():
        linked = nb.spawn_link(wait_forever)
        watched = nb.spawn(wait_forever)
        nb.monitor(watched)
        nb.register("shell", nb.self())
        nb.trap_exit(True)
        info = nb.process_info(nb.self())
        assert info["links"] == [linked]
        assert info["monitors"] == [watched]
        assert info["registered_name"] == "shell"
        assert info["trap_exit"] is True


async def test_process_info_status_of_caller_is_running() -> None:
    async with nb.Runtime():
        pid = nb.spawn(report_info, nb.self())
        info = await nb.receive(timeout=2)
        assert info["status"] == "running"
        assert nb.process_info(nb.self())["status"] == "running"
        assert pid != nb.self()


async def test_process_info_status_of_process_parked_in_receive_is_waiting() -> None:
    async with nb.Runtime():
        pid = nb.spawn(report_info, nb.self())
        await nb.receive(timeout=2)
        assert nb.process_info(pid)["status"] == "waiting"
        nb.send(pid, "wake")
        assert nb.process_info(pid)["status"] == "runnable"
