"""Nodes as real OS processes on loopback: connecting, sending, spawning, calls, links, failure."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
from conftest import node_runtime

import numbeam as nb

T = 20.0  # bound on every wait; a healthy run takes milliseconds


async def test_a_local_runtime_has_no_node_and_cannot_connect():
    async with nb.Runtime():
        assert nb.node() == "nonode@nohost"
        assert nb.nodes() == []
        with pytest.raises(RuntimeError, match="local"):
            await nb.connect("b@127.0.0.1:9")


async def test_port_zero_gives_the_real_name():
    async with node_runtime("a") as rt:
        name = nb.node()
        short, _, addr = name.partition("@")
        assert short == "a" and addr.startswith("127.0.0.1:")
        assert int(addr.rsplit(":", 1)[1]) > 0
        assert rt.pid.node == name


async def test_connect_spawn_and_ordered_messages(nb_nodes):
    (b,) = await nb_nodes(1)  # (numbeam's pytest plugin: started, connected, stopped after)
    assert nb.nodes() == [b]
    pid = nb.spawn("dist_helpers:collect", nb.self(), 2000, node=b)
    assert pid.node == b
    for i in range(2000):
        nb.send(pid, ("m", i))
    _, got = await nb.testing.assert_receive(lambda m: m[0] == "collected", timeout=T)
    assert got == [("m", i) for i in range(2000)]


async def test_remote_spawn_connects_by_itself_and_returns_at_once(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid = nb.spawn("dist_helpers:echo", node=b.name)  # not connected yet
        nb.send(pid, (nb.self(), [1, (2, 3), {"k": b"v"}]))
        assert await nb.receive(timeout=T) == (pid, [1, (2, 3), {"k": b"v"}])
        assert nb.nodes() == [b.name]


async def test_remote_call_and_cast_to_a_genserver(nodes):
    b = await nodes("b")
    async with node_runtime():
        nb.spawn("dist_helpers:start_counter", nb.self(), "counter", 10, node=b.name)
        _, counter = await nb.receive(timeout=T)
        assert counter.node == b.name
        assert await nb.call(counter, "get", timeout=T) == 10
        nb.cast(("counter", b.name), ("add", 5))
        assert await nb.call(("counter", b.name), "get", timeout=T) == 15
        with pytest.raises(nb.CallError) as err:
            await nb.call(counter, "boom", timeout=T)
        assert isinstance(err.value.reason, nb.RemoteError)
        assert err.value.reason.type_name == "RuntimeError"
        assert "boom" in err.value.reason.message


async def test_call_to_a_missing_remote_name_raises_noproc(nodes):
    b = await nodes("b")
    async with node_runtime():
        with pytest.raises(nb.NoProc):
            await nb.call(("nobody", b.name), "get", timeout=T)


async def test_a_remote_crash_propagates_over_a_link(nodes):
    b = await nodes("b")
    async with node_runtime():
        nb.trap_exit(True)
        pid = nb.spawn_link("dist_helpers:crash_on", "now", node=b.name)
        nb.send(pid, "now")
        ex = await nb.receive(nb.Exit, timeout=T)
        assert ex.pid == pid
        assert isinstance(ex.reason, nb.RemoteError)
        assert ex.reason.type_name == "ValueError"
        assert "asked to crash" in ex.reason.message
        assert "Traceback" in ex.reason.traceback


async def test_a_local_crash_propagates_to_a_remote_linked_process(nodes):
    b = await nodes("b")
    async with node_runtime():

        async def doomed():
            await nb.receive()
            raise KeyError("local failure")

        me = nb.self()
        victim = nb.spawn(doomed)
        watcher = nb.spawn("dist_helpers:trap_and_report", victim, me, node=b.name)
        assert await nb.receive(timeout=T) == ("linked", watcher)
        nb.send(victim, "go")
        tag, who, reason = await nb.receive(timeout=T)
        assert (tag, who) == ("exit", victim)
        assert isinstance(reason, nb.RemoteError) and reason.type_name == "KeyError"


async def test_remote_spawn_of_an_unknown_function_exits_with_the_error(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid, ref = nb.spawn_monitor("dist_helpers:no_such_function", node=b.name)
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.ref, down.pid) == (ref, pid)
        assert isinstance(down.reason, nb.RemoteError)
        assert down.reason.type_name == "AttributeError"
        pid2, _ = nb.spawn_monitor("no_such_module_anywhere:f", node=b.name)
        down = await nb.receive(nb.Down, timeout=T)
        assert down.pid == pid2 and down.reason.type_name == "ModuleNotFoundError"


async def test_monitor_and_link_to_a_dead_remote_pid(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid, _ = nb.spawn_monitor("dist_helpers:node_name", nb.self(), node=b.name)
        await nb.receive(tuple, timeout=T)
        assert (await nb.receive(nb.Down, timeout=T)).reason == "normal"
        ref2 = nb.monitor(pid)
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.ref, down.pid, down.reason) == (ref2, pid, "noproc")
        nb.trap_exit(True)
        nb.link(pid)
        assert await nb.receive(nb.Exit, timeout=T) == nb.Exit(pid, "noproc")
        ref3 = nb.monitor(("nobody", b.name))
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.ref, down.reason) == (ref3, "noproc")


async def test_a_value_that_cannot_cross_raises_typeerror_at_send(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid = nb.spawn("dist_helpers:echo", node=b.name)
        with pytest.raises(TypeError, match="function"):
            nb.send(pid, (nb.self(), lambda: 1))
        with pytest.raises(TypeError):
            nb.spawn("dist_helpers:collect", object(), 1, node=b.name)
        nb.send(pid, (nb.self(), "still fine"))  # nothing half-sent before it
        assert await nb.receive(timeout=T) == (pid, "still fine")


async def test_sigkill_of_a_node_fires_noconnection_within_the_heartbeat_timeout(nodes):
    b = await nodes("b")
    async with node_runtime(heartbeat_timeout=2.0, heartbeat_interval=0.5):
        nb.trap_exit(True)
        linked = nb.spawn_link("dist_helpers:wait_forever", node=b.name)
        watched = nb.spawn("dist_helpers:wait_forever", node=b.name)
        ref = nb.monitor(watched)
        nb.monitor_node(b.name)
        assert await asyncio.wait_for(nb.connect(b.name), T)
        # Make sure both processes exist there before the kill.
        probe = nb.spawn("dist_helpers:echo", node=b.name)
        nb.send(probe, (nb.self(), 1))
        await nb.receive(tuple, timeout=T)
        start = time.monotonic()
        b.kill(signal.SIGKILL)
        got = [await nb.receive(timeout=T) for _ in range(3)]
        elapsed = time.monotonic() - start
        assert nb.Exit(linked, "noconnection") in got
        assert nb.Down(ref, watched, "noconnection") in got
        assert any(type(m) is nb.NodeDown and m.name == b.name for m in got)
        assert elapsed < 2.0 + 1.0  # the heartbeat timeout, plus scheduling slack
        assert nb.nodes() == []


async def test_a_silent_node_is_dropped_by_heartbeats(nodes):
    b = await nodes("b")
    async with node_runtime(heartbeat_timeout=1.0, heartbeat_interval=0.2):
        assert await asyncio.wait_for(nb.connect(b.name), T)
        nb.monitor_node(b.name)
        b.kill(signal.SIGSTOP)
        try:
            down = await nb.receive(nb.NodeDown, timeout=T)
        finally:
            b.kill(signal.SIGCONT)
        assert down.name == b.name


async def test_a_restarted_node_is_a_new_incarnation(nodes):
    b = await nodes("b")
    async with node_runtime():
        nb.monitor_node(b.name)
        old = nb.spawn("dist_helpers:echo", node=b.name)
        nb.send(old, (nb.self(), "hi"))
        assert await nb.receive(timeout=T) == (old, "hi")
        b.kill(signal.SIGKILL)
        await b.wait()
        await nb.receive(nb.NodeDown, timeout=T)
        b2 = await nodes(b.name)  # the same name, so the same address
        assert b2.name == b.name
        assert await asyncio.wait_for(nb.connect(b.name), T)
        ref = nb.monitor(old)
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.ref, down.reason) == (ref, "noproc")
        new = nb.spawn("dist_helpers:echo", node=b.name)
        assert new.creation != old.creation
        nb.send(old, (nb.self(), "lost"))  # dropped: it names a dead incarnation
        nb.send(new, (nb.self(), "new"))
        assert await nb.receive(timeout=T) == (new, "new")


async def test_a_wrong_cookie_is_refused_and_the_node_keeps_serving(nodes, caplog):
    b = await nodes("b", cookie="another-cookie")
    async with node_runtime():
        assert not await asyncio.wait_for(nb.connect(b.name), T)
        assert nb.nodes() == []
    assert "cookie" in caplog.text
    async with node_runtime(cookie="another-cookie"):
        assert await asyncio.wait_for(nb.connect(b.name), T)


async def test_connections_are_transitive(nodes):
    b = await nodes("b")
    c = await nodes("c")
    async with node_runtime():
        assert await asyncio.wait_for(nb.connect(b.name), T)
        nb.spawn("dist_helpers:connect_to", nb.self(), c.name, node=b.name)
        assert await nb.receive(timeout=T) == ("connected", c.name, True)
        # b introduces us to c: we get connected to it without asking.
        nb.monitor_node(c.name)  # connects if need be; then wait for the connection
        assert await asyncio.wait_for(nb.connect(c.name), T)
        assert sorted(nb.nodes()) == sorted([b.name, c.name])


async def test_disconnect_tells_both_sides(nodes):
    b = await nodes("b")
    async with node_runtime():
        assert await asyncio.wait_for(nb.connect(b.name), T)
        nb.monitor_node(b.name)
        nb.trap_exit(True)
        pid = nb.spawn_link("dist_helpers:wait_forever", node=b.name)
        assert nb.disconnect(b.name)
        got = [await nb.receive(timeout=T) for _ in range(2)]
        assert nb.NodeDown(b.name, "disconnect") in got
        assert nb.Exit(pid, "noconnection") in got
        assert nb.nodes() == []
        assert not nb.disconnect(b.name)


async def test_ipc_nodes(nodes, tmp_path):
    b = await nodes(f"b@ipc://{tmp_path}/b.sock")
    assert b.name == f"b@ipc://{tmp_path}/b.sock"
    async with nb.Runtime(node="t@ipc://", cookie="numbeam-test-cookie"):
        assert nb.node().startswith("t@ipc://")
        path = nb.node()[len("t@ipc://") :]
        assert os.path.exists(path)
        pid = nb.spawn("dist_helpers:collect", nb.self(), 500, node=b.name)
        for i in range(500):
            nb.send(pid, i)
        assert await nb.receive(timeout=T) == ("collected", list(range(500)))
    assert not os.path.exists(path)  # the node removes its socket file when it stops


async def test_exit_signals_cross_nodes(nodes):
    b = await nodes("b")
    async with node_runtime():
        me = nb.self()
        trapper = nb.spawn("dist_helpers:trap_and_report", me, me, node=b.name)
        assert await nb.receive(timeout=T) == ("linked", trapper)
        # A trapping remote process gets Exit for a plain exit signal...
        plain = nb.spawn("dist_helpers:wait_forever", node=b.name)
        ref = nb.monitor(plain)
        nb.exit(plain, "normal")  # ignored: it does not trap exits
        nb.exit(plain, "kill")
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.ref, down.reason) == (ref, "killed")
        nb.exit(trapper, "custom")  # trapped there: it reports and exits
        tag, who, reason = await nb.receive(timeout=T)
        assert (tag, who, reason) == ("exit", me, "custom")


async def test_remote_spawn_with_a_name_and_send_to_name_at_node(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid = nb.spawn("dist_helpers:echo", name="echoer", node=b.name)
        nb.send(("echoer", b.name), (nb.self(), 1))
        assert await nb.receive(timeout=T) == (pid, 1)
        nb.send(("nobody", b.name), "dropped silently, as in Erlang")
        # A taken name: the new process exits with the error.
        pid2, ref = nb.spawn_monitor("dist_helpers:echo", node=b.name)
        nb.send(pid2, "stop")
        await nb.receive(nb.Down, timeout=T)
        dup = nb.spawn("dist_helpers:echo", name="echoer", node=b.name)
        ref = nb.monitor(dup)
        down = await nb.receive(nb.Down, timeout=T)
        assert down.ref == ref and isinstance(down.reason, nb.RemoteError)
        assert down.reason.type_name == "ValueError"


async def test_send_after_to_a_remote_pid(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid = nb.spawn("dist_helpers:echo", node=b.name)
        nb.send_after(0.01, pid, (nb.self(), "later"))
        assert await nb.receive(timeout=T) == (pid, "later")


async def test_remote_spawn_needs_an_importable_function():
    async with node_runtime():

        async def local_fn():
            pass

        with pytest.raises(TypeError, match="module-level"):
            nb.spawn(local_fn, node="b@127.0.0.1:1")
        with pytest.raises(ValueError, match=r"package\.module:function"):
            nb.spawn("no_colon", node="b@127.0.0.1:1")
    async with nb.Runtime():
        with pytest.raises(RuntimeError, match="this runtime is local"):
            nb.spawn("dist_helpers:echo", node="b@127.0.0.1:1")


async def test_remote_pids_are_not_local_introspection(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid = nb.spawn("dist_helpers:echo", node=b.name)
        with pytest.raises(ValueError, match="remote"):
            nb.is_alive(pid)
        with pytest.raises(ValueError, match="remote"):
            nb.process_info(pid)


async def test_connect_to_a_node_that_is_not_there_returns_false():
    async with node_runtime():
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        name = f"ghost@127.0.0.1:{port}"
        assert not await asyncio.wait_for(nb.connect(name), T)
        nb.monitor_node(name)
        assert await nb.receive(timeout=T) == nb.NodeDown(name, "noconnection")
        nb.trap_exit(True)
        ghost = nb.spawn_link("dist_helpers:echo", node=name)
        assert await nb.receive(timeout=T) == nb.Exit(ghost, "noconnection")


async def test_a_node_that_shuts_down_right_after_sending_loses_nothing(nodes):
    b = await nodes("b")
    async with node_runtime():
        nb.monitor_node(b.name)
        n = 50_000
        nb.spawn("dist_helpers:burst_then_stop_node", nb.self(), n, node=b.name)
        got = [await nb.receive(timeout=T) for _ in range(n)]
        assert got == [("burst", i) for i in range(n)]
        down = await nb.receive(nb.NodeDown, timeout=T)
        assert down.reason == "connection_closed"
        assert await b.wait() == 0


async def test_curve_encrypted_nodes_talk_and_plain_ones_cannot_join(nodes):
    b = await nodes("b", extra_args=("--curve",))
    async with node_runtime(curve=True, connect_timeout=3.0):
        pid = nb.spawn("dist_helpers:echo", node=b.name)
        nb.send(pid, (nb.self(), np.arange(100_000)))  # a large frame, encrypted too
        who, arr = await nb.receive(timeout=T)
        assert who == pid and int(arr.sum()) == sum(range(100_000))
    async with node_runtime(connect_timeout=3.0):
        assert not await asyncio.wait_for(nb.connect(b.name), T)
