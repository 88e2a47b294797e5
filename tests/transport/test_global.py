"""Global names: one table on every node, one winner per name, freed with the process or node."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest
from conftest import ask, forever, node_runtime, start_agent

import numbeam as nb

T = 20.0  # bound on every wait; a healthy run takes milliseconds


async def agent(node: str) -> nb.Pid:
    """Start a `dist_helpers.global_agent` on `node`; returns its pid once it is running."""
    return await start_agent(node, "dist_helpers:global_agent")


async def mesh(*agents: nb.Pid) -> None:
    """Make every agent's node connected to every other's, both ways, so that a name
    registered on one is known on all."""
    for a in agents:
        for b in agents:
            if a.node != b.node:
                assert await ask(a, "connect", b.node) == (True,)


# ---- one runtime -------------------------------------------------------------------------------


async def test_register_whereis_unregister_on_a_local_runtime():
    async with nb.Runtime():
        me = nb.self()
        assert nb.global_whereis("boss") is None
        assert await nb.global_register("boss", me)
        assert nb.global_whereis("boss") == me
        assert nb.global_registered() == ["boss"]
        await nb.global_unregister("boss")
        assert nb.global_whereis("boss") is None
        assert nb.global_registered() == []
        await nb.global_unregister("boss")  # not registered: nothing to do


async def test_a_name_is_taken_once_and_a_pid_may_hold_several():
    async with nb.Runtime():
        me = nb.self()
        other = nb.spawn(forever)
        assert await nb.global_register("a", me)
        assert await nb.global_register("b", me)
        assert not await nb.global_register("a", other)
        assert not await nb.global_register("a", me)
        assert sorted(nb.global_registered()) == ["a", "b"]
        assert nb.global_whereis("a") == nb.global_whereis("b") == me


async def test_names_are_freed_when_their_process_exits():
    async with nb.Runtime():
        pid, _ = nb.spawn_monitor(forever)
        assert await nb.global_register("x", pid)
        assert await nb.global_register("y", pid)
        nb.exit(pid, "kill")
        await nb.receive(nb.Down, timeout=T)
        assert nb.global_registered() == []
        assert await nb.global_register("x", nb.self())


async def test_racing_local_registrations_have_one_winner():
    async with nb.Runtime(node="solo@127.0.0.1:0", cookie="c"):
        me = nb.self()

        async def contender(i: int) -> None:
            nb.send(me, (i, nb.self(), await nb.global_register("one", nb.self())))
            await nb.receive(lambda m: False)

        for i in range(10):
            nb.spawn(contender, i)
        results = [await nb.receive(timeout=T) for _ in range(10)]
        winners = [pid for _, pid, ok in results if ok]
        assert len(winners) == 1
        assert nb.global_whereis("one") == winners[0]


async def test_bad_arguments_are_refused():
    async with nb.Runtime():
        with pytest.raises(TypeError, match="str"):
            await nb.global_register(1, nb.self())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Pid"):
            await nb.global_register("n", "not a pid")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            nb.global_whereis(None)  # type: ignore[arg-type]
        pid, _ = nb.spawn_monitor(forever)
        nb.exit(pid, "kill")
        await nb.receive(nb.Down, timeout=T)
        with pytest.raises(ValueError, match="not a live process"):
            await nb.global_register("n", pid)
    async with node_runtime():
        elsewhere = nb.Pid("far@127.0.0.1:9", 1, 1)
        with pytest.raises(ValueError, match="not connected"):
            await nb.global_register("n", elsewhere)
        assert nb.global_registered() == []


# ---- across nodes --------------------------------------------------------------------------


async def test_register_whereis_unregister_across_three_nodes(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        ab, ac = await agent(b.name), await agent(c.name)
        await mesh(ab, ac)
        ok, seen = await ask(ab, "register", "svc")
        assert ok and seen == ab
        # It returned once every node had the name: no waiting needed anywhere.
        assert nb.global_whereis("svc") == ab
        assert await ask(ac, "whereis", "svc") == (ab, ["svc"])
        assert await ask(ac, "register", "svc") == (False, ab)
        # A name for a pid of this node, registered from here.
        assert await nb.global_register("here", nb.self())
        assert (await ask(ab, "whereis", "here"))[0] == nb.self()
        assert (await ask(ac, "whereis", "here"))[0] == nb.self()
        # Unregistered from a node that is not the pid's: gone everywhere when it returns.
        await nb.global_unregister("svc")
        assert nb.global_whereis("svc") is None
        assert await ask(ab, "whereis", "svc") == (None, ["here"])
        assert await ask(ac, "whereis", "svc") == (None, ["here"])
        assert await ask(ac, "register", "svc") == (True, ac)
        # A remote pid that is already dead: its node adds nothing, so the name stays free, and
        # no node is left holding a lock on it (c could not register it otherwise).
        dead, _ = nb.spawn_monitor("dist_helpers:node_name", nb.self(), node=b.name)
        await nb.receive(nb.Down, timeout=T)
        assert await nb.global_register("ghost", dead)
        assert nb.global_whereis("ghost") is None
        assert await ask(ac, "register", "ghost") == (True, ac)


async def test_a_name_is_freed_everywhere_when_its_process_exits(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        ab, ac = await agent(b.name), await agent(c.name)
        await mesh(ab, ac)
        echo_b = nb.spawn("dist_helpers:echo", node=b.name)
        assert await ask(ab, "register", "leader") == (True, ab)
        ref = nb.monitor(ab)
        nb.send(ab, ("stop",))
        assert (await nb.receive(nb.Down, timeout=T)).ref == ref
        # b removed the name as the process exited; anything b sends after arrives after that.
        nb.send(echo_b, (nb.self(), "sync"))
        assert await nb.receive(timeout=T) == (echo_b, "sync")
        assert nb.global_whereis("leader") is None
        assert await ask(ac, "whereis_via", "leader", echo_b) == (None,)
        assert await ask(ac, "register", "leader") == (True, ac)


async def test_a_name_is_freed_when_its_node_is_killed(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        ab, ac = await agent(b.name), await agent(c.name)
        await mesh(ab, ac)
        assert await ask(ab, "register", "worker") == (True, ab)
        assert await ask(ac, "watch_node", b.name, "worker") == ()
        nb.monitor_node(b.name)
        b.kill(signal.SIGKILL)
        # The table is cleaned before NodeDown is delivered, here and on c.
        assert (await nb.receive(nb.NodeDown, timeout=T)).name == b.name
        assert nb.global_whereis("worker") is None
        assert nb.global_registered() == []
        reply = await nb.receive(
            lambda m: type(m) is tuple and m[:2] == ("nodedown", ac), timeout=T
        )
        assert reply == ("nodedown", ac, b.name, None)
        assert await ask(ac, "register", "worker") == (True, ac)


async def test_two_nodes_racing_for_a_name_get_one_winner(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        ab, ac = await agent(b.name), await agent(c.name)
        await mesh(ab, ac)
        for round_ in range(5):
            name = f"race-{round_}"
            nb.send(ab, ("register", name))
            nb.send(ac, ("register", name))
            replies = [
                await nb.receive(lambda m: type(m) is tuple and m[0] == "register", timeout=T)
                for _ in range(2)
            ]
            winners = [who for _, who, ok, _ in replies if ok]
            assert len(winners) == 1, replies
            winner = winners[0]
            # Each saw the winner when it returned; so does this node, and the loser's node.
            assert all(seen == winner for _, _, _, seen in replies)
            assert nb.global_whereis(name) == winner
            assert (await ask(ab, "whereis", name))[0] == winner
            assert (await ask(ac, "whereis", name))[0] == winner


async def test_a_name_registered_on_both_sides_of_a_split_keeps_one_winner(nodes, caplog):
    b = await nodes("b")
    async with node_runtime():
        me = nb.self()
        ab = await agent(b.name)
        assert await nb.global_register("split", me)
        assert (await ask(ab, "whereis", "split"))[0] == me
        # b leaves us (forgetting our names), registers the same name for itself, and returns.
        assert await ask(ab, "split_register", "split", nb.node()) == (True,)
        assert await asyncio.wait_for(nb.connect(b.name), T)  # our side of the link is up too
        # The least pid wins everywhere ("b@..." sorts before "t@..."), and a warning says so.
        assert nb.global_whereis("split") == ab
        assert nb.global_registered() == ["split"]
        assert await ask(ab, "whereis", "split") == (ab, ["split"])
        assert "global name 'split'" in caplog.text
        # The loser's entry was dropped, not kept aside: when the winner exits, the name is free.
        echo_b = nb.spawn("dist_helpers:echo", node=b.name)
        ref = nb.monitor(ab)
        nb.send(ab, ("stop",))
        assert (await nb.receive(nb.Down, timeout=T)).ref == ref
        nb.send(echo_b, (nb.self(), "sync"))
        assert await nb.receive(timeout=T) == (echo_b, "sync")
        assert nb.global_whereis("split") is None


async def test_a_registrar_killed_mid_protocol_releases_its_locks(nodes):
    b = await nodes("b")
    async with node_runtime():
        me = nb.self()

        async def registrar(name: str) -> None:
            nb.send(me, ("started", nb.self()))
            nb.send(me, ("result", nb.self(), await nb.global_register(name, nb.self())))
            await nb.receive(lambda m: False)

        assert await asyncio.wait_for(nb.connect(b.name), T)
        b.kill(signal.SIGSTOP)  # b holds every answer back, so the first registrar waits
        try:
            first = nb.spawn(registrar, "lock")
            # It sends "started", then runs until it awaits b's answer, before we run again.
            assert await nb.receive(timeout=T) == ("started", first)
            nb.exit(first, "kill")
        finally:
            b.kill(signal.SIGCONT)
        second = nb.spawn(registrar, "lock")
        assert await nb.receive(timeout=T) == ("started", second)
        assert await nb.receive(timeout=T) == ("result", second, True)
        assert nb.global_whereis("lock") == second


async def test_a_node_lost_mid_registration_does_not_block_it(nodes):
    b = await nodes("b")
    async with node_runtime(heartbeat_timeout=1.0, heartbeat_interval=0.2):
        assert await asyncio.wait_for(nb.connect(b.name), T)
        nb.monitor_node(b.name)
        b.kill(signal.SIGSTOP)  # silent: found down by heartbeats while we wait on it
        try:
            assert await asyncio.wait_for(nb.global_register("alone", nb.self()), T)
            assert (await nb.receive(nb.NodeDown, timeout=T)).name == b.name
        finally:
            b.kill(signal.SIGCONT)
        assert nb.global_whereis("alone") == nb.self()


async def test_the_locks_of_a_lost_node_are_released(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        ab, ac = await agent(b.name), await agent(c.name)
        await mesh(ab, ac)
        echo_b = nb.spawn("dist_helpers:echo", node=b.name)
        nb.monitor_node(b.name)
        c.kill(signal.SIGSTOP)  # b's registration will wait on c, holding our lock ("t" is boss)
        try:
            assert await ask(ab, "started_register", "contested") == ()
            # b asked for our lock before it answered this; so we hold its lock now.
            nb.send(echo_b, (nb.self(), "sync"))
            assert await nb.receive(timeout=T) == (echo_b, "sync")
            b.kill(signal.SIGKILL)
            assert (await nb.receive(nb.NodeDown, timeout=T)).name == b.name
        finally:
            c.kill(signal.SIGCONT)
        assert await asyncio.wait_for(nb.global_register("contested", nb.self()), T)
        assert (await ask(ac, "whereis", "contested"))[0] == nb.self()


async def test_registrations_without_a_clash_log_no_warning(nodes, caplog):
    b = await nodes("b")
    caplog.set_level(logging.WARNING)
    async with node_runtime():
        ab = await agent(b.name)
        assert await ask(ab, "register", "quiet") == (True, ab)
        await nb.global_unregister("quiet")
        assert await nb.global_register("quiet", nb.self())
    assert "global name" not in caplog.text
