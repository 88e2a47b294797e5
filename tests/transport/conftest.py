"""Fixtures for multi-node tests: a factory of node OS processes, cleaned up after each test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cluster import COOKIE, NodeProc, start_node

import numbeam as nb

NodeFactory = Callable[..., Awaitable[NodeProc]]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """``await nodes("b")`` starts a node process; all are stopped (killed if need be) after."""
    started: list[NodeProc] = []

    async def factory(name: str, **kwargs: object) -> NodeProc:
        node = await start_node(name, home=tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(node)
        return node

    try:
        yield factory
    finally:
        for node in started:
            with contextlib.suppress(Exception):
                await node.stop()
            drain = getattr(node, "_drain", None)
            if drain is not None:
                drain.cancel()
                with contextlib.suppress(BaseException):
                    await drain


def node_runtime(name: str = "t", **options: object) -> nb.Runtime:
    """This test's own node, ``name@127.0.0.1:<free port>`` with the test cookie: use it as
    ``async with node_runtime():`` inside the test, so the test's task is its shell process."""
    options.setdefault("cookie", COOKIE)
    return nb.Runtime(node=f"{name}@127.0.0.1:0", **options)


T = 20.0  # bound on every wait in these tests; a healthy run takes milliseconds


async def forever() -> None:
    """A process that waits until it is killed."""
    await nb.receive(lambda m: False)


async def start_agent(node: str, fn: str) -> nb.Pid:
    """Spawn the agent `fn` (it first sends ``("agent", its pid)``) on `node`; return its pid."""
    pid = nb.spawn(fn, nb.self(), node=node)
    assert await nb.receive(lambda m: m == ("agent", pid), timeout=T) == ("agent", pid)
    return pid


async def ask(pid: nb.Pid, op: str, *args: Any) -> tuple[Any, ...]:
    """Send ``(op, *args)`` to an agent and return what follows ``(op, pid)`` in its answer."""
    nb.send(pid, (op, *args))
    reply = await nb.receive(
        lambda m: type(m) is tuple and len(m) >= 2 and m[:2] == (op, pid), timeout=T
    )
    return reply[2:]
