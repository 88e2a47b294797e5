"""Process functions that tests spawn on other nodes by module path (``dist_helpers:name``)."""

from __future__ import annotations

from typing import Any

import numbeam as nb


async def echo() -> None:
    """Answer ``(from, x)`` with ``(self, x)`` until told ``"stop"``."""
    while True:
        msg = await nb.receive()
        if msg == "stop":
            return
        sender, x = msg
        nb.send(sender, (nb.self(), x))


async def collect(report_to: nb.Pid, n: int) -> None:
    """Receive `n` messages, then send them all back in one list."""
    got = [await nb.receive() for _ in range(n)]
    nb.send(report_to, ("collected", got))


async def crash_on(msg_value: Any) -> None:
    """Wait for `msg_value`, then raise."""
    while (await nb.receive()) != msg_value:
        pass
    raise ValueError(f"asked to crash on {msg_value!r}")


async def wait_forever() -> None:
    await nb.receive(lambda m: False)


async def link_and_wait(pid: nb.Pid) -> None:
    nb.link(pid)
    await nb.receive(lambda m: False)


async def trap_and_report(pid: nb.Pid, report_to: nb.Pid) -> None:
    """Trap exits, link to `pid`, forward the Exit it gets to `report_to`."""
    nb.trap_exit(True)
    nb.link(pid)
    nb.send(report_to, ("linked", nb.self()))
    msg = await nb.receive(nb.Exit)
    nb.send(report_to, ("exit", msg.pid, msg.reason))


async def node_name(report_to: nb.Pid) -> None:
    nb.send(report_to, ("node", nb.node(), nb.self()))


class Counter(nb.GenServer):
    async def init(self, start: int) -> None:
        self.n = start

    async def handle_call(self, request: Any, caller: Any) -> Any:
        if request == "get":
            return self.n
        if request == "boom":
            raise RuntimeError("boom")
        if request == "slow":
            return nb.NOREPLY
        raise ValueError(f"unknown call {request!r}")

    async def handle_cast(self, request: Any) -> None:
        if request[0] == "add":
            self.n += request[1]


async def start_counter(report_to: nb.Pid, name: str, start: int) -> None:
    """Start a Counter registered as `name` (not linked: it outlives this process)."""
    pid = await Counter.start(start, name=name)
    nb.send(report_to, ("counter", pid))


async def connect_to(report_to: nb.Pid, name: str) -> None:
    nb.send(report_to, ("connected", name, await nb.connect(name)))


async def sequence_sender(target: nb.Pid, token: str, n: int) -> None:
    """Send ``(token, i)`` for i in range(n) to `target`, yielding now and then."""
    import asyncio

    for i in range(n):
        nb.send(target, (token, i))
        if i % 50 == 49:
            await asyncio.sleep(0)


# ---- global names and process groups (test_global.py, test_pg.py) --------------------------


async def global_agent(report_to: nb.Pid) -> None:
    """Announce ``("agent", self)``, then serve requests ``(op, ...)`` from `report_to`, each
    answered with a tuple ``(op, self, ...)``, until ``("stop",)``. It registers itself."""
    me = nb.self()
    nb.send(report_to, ("agent", me))
    watched_name = None
    while True:
        msg = await nb.receive()
        if type(msg) is nb.NodeDown:  # after ("watch_node", ...): the view when it arrived
            nb.send(report_to, ("nodedown", me, msg.name, nb.global_whereis(watched_name)))
            continue
        op = msg[0]
        if op == "stop":
            return
        if op == "register":
            ok = await nb.global_register(msg[1], me)
            nb.send(report_to, ("register", me, ok, nb.global_whereis(msg[1])))
        elif op == "started_register":  # say so first, then register (the caller kills us)
            nb.send(report_to, ("started_register", me))
            await nb.global_register(msg[1], me)
        elif op == "whereis":
            nb.send(report_to, ("whereis", me, nb.global_whereis(msg[1]), nb.global_registered()))
        elif op == "whereis_via":  # first a round trip to the echo process `msg[2]`
            via = msg[2]
            nb.send(via, (me, "ping"))
            await nb.receive(lambda m, via=via: type(m) is tuple and m == (via, "ping"))
            nb.send(report_to, ("whereis_via", me, nb.global_whereis(msg[1])))
        elif op == "unregister":
            await nb.global_unregister(msg[1])
            nb.send(report_to, ("unregister", me))
        elif op == "connect":
            nb.send(report_to, ("connect", me, await nb.connect(msg[1])))
        elif op == "split_register":  # register while apart from node `msg[2]`, then rejoin
            _, name, node = msg
            nb.disconnect(node)
            ok = await nb.global_register(name, me)
            await nb.connect(node)
            nb.send(report_to, ("split_register", me, ok))
        elif op == "watch_node":
            _, node, watched_name = msg
            nb.monitor_node(node)
            nb.send(report_to, ("watch_node", me))


async def pg_agent(report_to: nb.Pid) -> None:
    """Announce ``("agent", self)``, then serve process-group requests from `report_to`, each
    answered with a tuple ``(op, self, ...)``, until ``("stop",)``."""
    me = nb.self()
    nb.send(report_to, ("agent", me))
    while True:
        msg = await nb.receive()
        op = msg[0]
        if op == "stop":
            return
        if op == "join":
            nb.pg.join(msg[1], me)
            nb.send(report_to, ("join", me))
        elif op == "leave":
            nb.send(report_to, ("leave", me, nb.pg.leave(msg[1], me)))
        elif op == "connect":
            nb.send(report_to, ("connect", me, await nb.connect(msg[1])))
        elif op == "wait_members":  # wait until this node sees `n` members, then report them
            _, group, n = msg
            ref, members = nb.pg.monitor(group)
            while len(members) != n:
                await nb.receive(
                    lambda m, ref=ref: type(m) in (nb.pg.Join, nb.pg.Leave) and m.ref == ref
                )
                members = nb.pg.members(group)
            nb.pg.demonitor(ref)
            nb.send(report_to, ("wait_members", me, members))


async def burst_then_stop_node(target: nb.Pid, n: int) -> None:
    """Send ``("burst", i)`` for i in range(n) in one go, then stop this node (SIGTERM): a
    node that shuts down must still deliver everything it sent."""
    import os
    import signal

    for i in range(n):
        nb.send(target, ("burst", i))
    os.kill(os.getpid(), signal.SIGTERM)


async def announce_and_wait(report_to: nb.Pid) -> None:
    """Tell `report_to` ``("worker", self, node)``, then wait until killed."""
    nb.send(report_to, ("worker", nb.self(), nb.node()))
    await nb.receive(lambda m: False)


class RemoteWorker:
    """A hand-written child start: ``start_link(node, report_to)`` spawns `announce_and_wait`
    linked on `node` (the supervisor calls it, so the link is the supervisor's)."""

    @classmethod
    async def start_link(cls, node: str, report_to: nb.Pid) -> nb.Pid:
        return nb.spawn_link("dist_helpers:announce_and_wait", report_to, node=node)


class Announcer(nb.GenServer):
    """A server for ``start_link(..., node=)``: ``init(report_to)`` tells `report_to`
    ``("worker", self, node)``; a call is echoed with the node's name. ``fail=True`` makes
    `init` raise."""

    async def init(self, report_to: nb.Pid, fail: bool = False) -> None:
        if fail:
            raise ValueError("init refused")
        nb.send(report_to, ("worker", nb.self(), nb.node()))

    async def handle_call(self, request: object, caller: object) -> object:
        return ("echo", request, nb.node())
