"""Children, nodes and waits shared by the tests in tests/supervision.

Imported as ``from supervision_helpers import ...``: pytest's default "prepend" import mode
puts this folder on ``sys.path``. The name does not start with ``test_``, so pytest does not
collect it. Children report to the test process: ("started", id, pid) from init and, when
they trap exits, ("stopped", id, reason) from terminate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numbeam as nb

T = 2.0  # the longest any single wait in these tests may take


@contextlib.asynccontextmanager
async def node() -> AsyncIterator[None]:
    """A fresh node, and a bound on the whole test: supervisor calls wait without a timeout."""
    async with nb.Runtime(), asyncio.timeout(10):
        yield


class ReportingWorker(nb.GenServer):
    """Traps exits; reports ("started", id, pid) from init and ("stopped", id, reason)."""

    async def init(self, test: nb.Pid, id: str) -> None:
        self.test, self.id = test, id
        nb.trap_exit(True)
        nb.send(test, ("started", id, nb.self()))

    async def terminate(self, reason: Any) -> None:
        nb.send(self.test, ("stopped", self.id, reason))


class FailingInit(nb.GenServer):
    async def init(self) -> None:
        raise nb.Stop("cannot start")


class Gated(nb.GenServer):
    """Starts the first time; on restarts, its init asks the test ("init?", pid) and starts
    only if the answer is "ok". `starts` is an Agent counting the starts."""

    async def init(self, test: nb.Pid, starts: nb.Pid) -> None:
        if await nb.Agent.get_and_update(starts, lambda n: (n, n + 1)) > 0:
            nb.send(test, ("init?", nb.self()))
            if await nb.receive(lambda m: m in ("ok", "fail"), timeout=T) == "fail":
                raise nb.Stop("refused")
        nb.send(test, ("started", "g", nb.self()))


def tagged(tag: str) -> Any:
    return lambda m: type(m) is tuple and m[0] == tag


def is_report(m: Any) -> bool:
    return type(m) is tuple and len(m) == 3 and m[0] in ("started", "stopped")


async def reports(n: int) -> list[tuple[str, str]]:
    """The next `n` started/stopped reports, as (event, id)."""
    return [(m[0], m[1]) for m in [await nb.receive(is_report, timeout=T) for _ in range(n)]]


async def started(id: str) -> nb.Pid:
    msg = await nb.receive(lambda m: is_report(m) and m[:2] == ("started", id), timeout=T)
    return msg[2]
