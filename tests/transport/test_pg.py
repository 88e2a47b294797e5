"""Process groups: join and leave, monitors, and views that converge as nodes come and go."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from conftest import ask, forever, node_runtime, start_agent

import numbeam as nb

T = 20.0  # bound on every wait; a healthy run takes milliseconds


async def agent(node: str) -> nb.Pid:
    """Start a `dist_helpers.pg_agent` on `node`; returns its pid once it is running."""
    return await start_agent(node, "dist_helpers:pg_agent")


async def event(ref: nb.Ref) -> nb.pg.Join | nb.pg.Leave:
    """The next group notification of the monitor `ref`."""
    return await nb.receive(
        lambda m: type(m) in (nb.pg.Join, nb.pg.Leave) and m.ref == ref, timeout=T
    )


# ---- one runtime -------------------------------------------------------------------------------


async def test_join_leave_and_members_on_a_local_runtime():
    async with nb.Runtime():
        a, b = nb.spawn(forever), nb.spawn(forever)
        assert nb.pg.members("g") == [] and nb.pg.which_groups() == []
        nb.pg.join("g", a)
        nb.pg.join("g", [a, b])  # a second time for a: it must leave twice
        nb.pg.join(("jobs", 1), b)
        assert Counter(nb.pg.members("g")) == Counter([a, a, b])
        assert Counter(nb.pg.local_members("g")) == Counter([a, a, b])
        assert sorted(map(str, nb.pg.which_groups())) == sorted(map(str, ["g", ("jobs", 1)]))
        assert nb.pg.leave("g", a)
        assert Counter(nb.pg.members("g")) == Counter([a, b])
        assert nb.pg.leave("g", [a, b])
        assert not nb.pg.leave("g", a)  # no longer a member
        assert nb.pg.members("g") == []
        assert nb.pg.which_groups() == [("jobs", 1)]
        assert nb.pg.members(("jobs", 1)) == [b]


async def test_a_process_that_exits_leaves_all_its_groups():
    async with nb.Runtime():
        pid, _ = nb.spawn_monitor(forever)
        keep = nb.spawn(forever)
        nb.pg.join("g", [pid, pid, keep])
        nb.pg.join("h", pid)
        ref, members = nb.pg.monitor("g")
        assert Counter(members) == Counter([pid, pid, keep])
        nb.exit(pid, "kill")
        await nb.receive(nb.Down, timeout=T)
        assert await event(ref) == nb.pg.Leave(ref, "g", [pid, pid])
        assert nb.pg.members("g") == [keep]
        assert nb.pg.members("h") == []
        assert nb.pg.which_groups() == ["g"]


async def test_monitor_reports_joins_and_leaves_until_demonitor():
    async with nb.Runtime(node="solo@127.0.0.1:0", cookie="c"):
        a = nb.spawn(forever)
        nb.pg.join("g", a)
        ref, members = nb.pg.monitor("g")
        assert members == [a]
        b = nb.spawn(forever)
        nb.pg.join("g", [b, b])
        nb.pg.join("other", b)  # another group: not reported
        nb.pg.leave("g", a)
        assert await event(ref) == nb.pg.Join(ref, "g", [b, b])
        assert await event(ref) == nb.pg.Leave(ref, "g", [a])
        assert nb.pg.demonitor(ref)
        assert not nb.pg.demonitor(ref)
        nb.pg.join("g", a)  # notifications are delivered at once: none is on its way
        with pytest.raises(TimeoutError):
            await nb.receive(lambda m: type(m) in (nb.pg.Join, nb.pg.Leave), timeout=0)


async def test_a_monitoring_process_that_exits_is_forgotten():
    async with nb.Runtime():
        me = nb.self()

        async def watcher() -> None:
            nb.send(me, nb.pg.monitor("g"))
            await nb.receive(lambda m: False)

        w, _ = nb.spawn_monitor(watcher)
        ref, _ = await nb.receive(tuple, timeout=T)
        nb.exit(w, "kill")
        await nb.receive(nb.Down, timeout=T)
        assert not nb.pg.demonitor(ref)  # gone with its process
        nb.pg.join("g", me)  # nobody to tell, nothing fails


async def test_bad_arguments_are_refused():
    async with nb.Runtime():
        me = nb.self()
        with pytest.raises(TypeError, match="list"):
            nb.pg.join(["not", "hashable"], me)
        with pytest.raises(TypeError, match="object"):
            nb.pg.join(object(), me)  # hashable, but cannot cross to another node
        with pytest.raises(TypeError, match="object"):
            nb.pg.join(("ok", object()), me)
        with pytest.raises(TypeError, match="Pid"):
            nb.pg.join("g", "me")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="remote"):
            nb.pg.join("g", nb.Pid("far@127.0.0.1:9", 1, 1))
        with pytest.raises(ValueError, match="remote"):
            nb.pg.leave("g", nb.Pid("far@127.0.0.1:9", 1, 1))
        dead, _ = nb.spawn_monitor(forever)
        nb.exit(dead, "kill")
        await nb.receive(nb.Down, timeout=T)
        with pytest.raises(ValueError, match="not a live process"):
            nb.pg.join("g", [me, dead])
        assert nb.pg.members("g") == []  # all or nothing
        with pytest.raises(TypeError, match="Ref"):
            nb.pg.demonitor("ref")  # type: ignore[arg-type]


# ---- across nodes --------------------------------------------------------------------------


async def test_members_converge_on_three_nodes(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        group = ("workers", 7)  # a tuple crosses as a tuple: the same group everywhere
        ref, members = nb.pg.monitor(group)
        assert members == []
        ab, ac = await agent(b.name), await agent(c.name)
        assert await ask(ab, "connect", c.name) == (True,)
        assert await ask(ac, "connect", b.name) == (True,)
        local = nb.spawn(forever)
        nb.pg.join(group, local)
        assert await event(ref) == nb.pg.Join(ref, group, [local])
        assert await ask(ab, "join", group) == ()
        assert await ask(ac, "join", group) == ()
        assert await ask(ac, "join", group) == ()  # twice: counted twice
        got = [await event(ref) for _ in range(3)]
        assert Counter(p for ev in got for p in ev.pids) == Counter([ab, ac, ac])
        assert all(type(ev) is nb.pg.Join for ev in got)
        everyone = Counter([local, ab, ac, ac])
        assert Counter(nb.pg.members(group)) == everyone
        assert nb.pg.local_members(group) == [local]
        (seen_b,) = await ask(ab, "wait_members", group, 4)
        (seen_c,) = await ask(ac, "wait_members", group, 4)
        assert Counter(seen_b) == Counter(seen_c) == everyone
        assert group in nb.pg.which_groups()


async def test_leave_and_exit_update_every_view(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        ref, _ = nb.pg.monitor("g")
        ab, ac = await agent(b.name), await agent(c.name)
        assert await ask(ab, "connect", c.name) == (True,)
        assert await ask(ab, "join", "g") == ()
        assert await ask(ac, "join", "g") == ()
        await event(ref), await event(ref)
        assert await ask(ab, "leave", "g") == (True,)
        assert await event(ref) == nb.pg.Leave(ref, "g", [ab])
        assert await ask(ab, "leave", "g") == (False,)
        nb.send(ac, ("stop",))  # it exits: it leaves its groups
        assert await event(ref) == nb.pg.Leave(ref, "g", [ac])
        assert nb.pg.members("g") == []
        assert "g" not in nb.pg.which_groups()
        assert await ask(ab, "wait_members", "g", 0) == ([],)


async def test_the_members_of_a_killed_node_vanish_from_every_view(nodes):
    b, c = await nodes("b"), await nodes("c")
    async with node_runtime():
        ref, _ = nb.pg.monitor("g")
        ab, ac = await agent(b.name), await agent(c.name)
        assert await ask(ab, "connect", c.name) == (True,)
        assert await ask(ac, "connect", b.name) == (True,)
        assert await ask(ab, "join", "g") == ()
        assert await ask(ab, "join", "g") == ()
        assert await ask(ac, "join", "g") == ()
        for _ in range(3):
            await event(ref)
        assert (await ask(ac, "wait_members", "g", 3))[0].count(ab) == 2
        nb.monitor_node(b.name)
        b.kill(signal.SIGKILL)
        # The view is cleaned (and monitors told) before NodeDown is delivered.
        leave = await event(ref)
        assert leave == nb.pg.Leave(ref, "g", [ab, ab])
        assert (await nb.receive(nb.NodeDown, timeout=T)).name == b.name
        assert nb.pg.members("g") == [ac]
        assert await ask(ac, "wait_members", "g", 1) == ([ac],)


async def test_a_node_that_connects_learns_the_existing_members(nodes):
    b = await nodes("b")
    async with node_runtime():
        local = nb.spawn(forever)
        nb.pg.join("early", [local, local])  # before any other node is connected
        ref, _ = nb.pg.monitor("early")
        ab = await agent(b.name)
        assert await ask(ab, "wait_members", "early", 2) == ([local, local],)
        assert await ask(ab, "join", "early") == ()
        assert await event(ref) == nb.pg.Join(ref, "early", [ab])
