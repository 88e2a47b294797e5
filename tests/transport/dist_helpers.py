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
