"""Fixtures for multi-node tests: a factory of node OS processes, cleaned up after each test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

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
