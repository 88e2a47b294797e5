"""The callers' side: `run`, `run_batch` and `stats`, and which serving instance a request goes
to.

A request is an `nb.call` to one serving instance, carrying a request id of the caller's, so
that a caller that times out can withdraw what is still queued (a cast with that id). The
instance is this node's when there is one, else the least loaded of the group's members
elsewhere: each node remembers, per instance, the queue length its last answer reported plus
the requests it has in flight there (Nx.Serving picks at random, weighted by partitions; a
queue length spreads a burst over the nodes without a round trip to ask). An instance found
gone before it took the request (`nb.NoProc`) is skipped and the next one tried, within the
same timeout; one that dies after taking it raises `nb.CallError`, never a hang.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

from numbeam.actors import CallError, NoProc, Pid, call, cast, make_ref, spawn
from numbeam.actors._runtime import _check_timeout, _current, _rt
from numbeam.transport import pg

from ._policy import choose_instance
from ._server import GROUP

__all__ = ["Overloaded", "run", "run_batch", "stats"]


class Overloaded(RuntimeError):
    """Raised when a request reaches a serving whose queue already holds `max_queue` inputs:
    refused at once, instead of waiting and growing memory (also across nodes)."""


class _Loads:
    """Per node: requests in flight to each instance, and the queue length it last reported."""

    def __init__(self, rt: Any) -> None:
        self.in_flight: dict[Pid, int] = {}
        self.queued: dict[Pid, int] = {}

    def score(self, pids: list[Pid]) -> dict[Pid, int]:
        return {p: self.in_flight.get(p, 0) + self.queued.get(p, 0) for p in pids}

    def forget(self, pid: Pid) -> None:
        self.queued.pop(pid, None)


def _loads() -> _Loads:
    return _rt().extension("serving.loads", _Loads)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what} takes the serving's name (a str), got {name!r}")


def _raise_copy(exc: BaseException) -> BaseException:
    """A copy of `exc` for one caller (every caller of a failed batch gets the same exception;
    raising one instance in many tasks would tangle their tracebacks), chained like it."""
    try:
        fresh = copy.copy(exc)
    except Exception:
        return exc
    if type(fresh) is not type(exc):
        return exc
    fresh.__cause__, fresh.__context__ = exc.__cause__, exc.__context__
    fresh.__suppress_context__ = exc.__suppress_context__
    return fresh.with_traceback(exc.__traceback__)


async def run(name: str, x: Any, timeout: float | None = 5.0) -> Any:
    """`predict`'s output row for the input `x`, computed in a batch by the serving `name`.

    `x` is a numpy array, an `nb.Tensor`, a number, or a tuple/dict of those; the answer is the
    matching row of `predict`'s output (an array row, or a tuple/dict of rows). Call it from a
    process, or from any task inside the runtime (``asyncio.gather`` of several runs works).

    Raises:
        nb.NoProc: no serving of that name runs in the cluster.
        nb.Overloaded: the serving's queue is full (`max_queue`).
        TimeoutError: no answer within `timeout` seconds (the input is withdrawn if its batch
            has not started).
        nb.CallError: the serving exited before answering.
        ValueError: `x` does not stack with the rest of its batch (another shape or dtype).
        TypeError: `x` is not an input `nb.serving` takes.
        Exception: what `predict` raised for the batch (`nb.RemoteError` from another node).
    """
    rows = await _request(name, [x], timeout, "nb.serving.run()")
    return rows[0]


async def run_batch(name: str, xs: Sequence[Any], timeout: float | None = 5.0) -> list[Any]:
    """`predict`'s output rows for each input of `xs`, in order (see `run`). More inputs than
    the serving's `batch_size` are split over several batches; if any input fails, the call
    raises that input's error."""
    if not isinstance(xs, (list, tuple)):
        raise TypeError(f"nb.serving.run_batch() takes a list of inputs, got {type(xs).__name__}")
    if not xs:
        _check_name(name, "nb.serving.run_batch()")
        return []
    return await _request(name, list(xs), timeout, "nb.serving.run_batch()")


async def _request(name: str, xs: list[Any], timeout: float | None, what: str) -> list[Any]:
    _check_name(name, what)
    _check_timeout(timeout)
    proc = _current.get(None)
    if proc is None or proc.task is not asyncio.current_task():
        return await _from_another_task(name, xs, timeout, what)
    return await _call(name, xs, timeout, what)


async def _from_another_task(
    name: str, xs: list[Any], timeout: float | None, what: str
) -> list[Any]:
    """The request from a task that is not a process's own (``asyncio.gather`` in a process,
    a web framework's handler tasks inside ``nb.Runtime``): only a process's own task may
    receive its replies, so a helper process makes the call and hands over the outcome.
    If the waiting task is cancelled, the helper still ends within `timeout`."""
    fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    async def helper() -> None:
        try:
            rows = await _call(name, xs, timeout, what)
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
        else:
            if not fut.done():
                fut.set_result(rows)

    spawn(helper)
    return await fut


async def _call(name: str, xs: list[Any], timeout: float | None, what: str) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    group = (GROUP, name)
    loads = _loads()
    gone: set[Pid] = set()
    while True:
        local = pg.local_members(group)
        if len(local) == 1 and not gone:
            pid = local[0]  # the common case: this node's own serving
        else:
            members = pg.members(group)
            pid = choose_instance(local, members, loads.score(members), gone)
        if pid is None:
            left = " is left" if gone else ""
            raise NoProc(f"{what}: no serving named {name!r}{left} in the cluster")
        rid = make_ref()
        left_s = None if deadline is None else max(0.0, deadline - loop.time())
        loads.in_flight[pid] = loads.in_flight.get(pid, 0) + 1
        try:
            answer = await call(pid, ("$serving_run", rid, xs), timeout=left_s)
        except NoProc:
            gone.add(pid)  # gone before it took the request: try another
            loads.forget(pid)
            continue
        except asyncio.CancelledError:  # the caller is killed: withdraw what still waits
            cast(pid, ("$serving_cancel", rid))
            raise
        except TimeoutError:
            cast(pid, ("$serving_cancel", rid))
            raise TimeoutError(
                f"{what}: serving {name!r} ({pid!r}) did not answer within {timeout} s"
            ) from None
        except CallError as e:
            loads.forget(pid)
            raise CallError(
                e.reason,
                f"{what}: serving {name!r} ({pid!r}) exited before answering: {e.reason!r}",
            ) from None
        finally:
            n = loads.in_flight[pid] - 1
            if n:
                loads.in_flight[pid] = n
            else:
                del loads.in_flight[pid]
        kind = answer[0]
        if kind == "ok":
            loads.queued[pid] = answer[2]
            return answer[1]  # type: ignore[no-any-return]
        if kind == "overloaded":
            raise Overloaded(answer[1])
        raise _raise_copy(answer[1])


async def stats(name: str | Pid, timeout: float | None = 5.0) -> dict[str, Any]:
    """This node's serving `name` (or the serving `pid`, anywhere) in figures: ``requests``
    answered, ``failed``, ``overloaded`` (refused), ``batches``, ``inputs`` run,
    ``mean_batch_size``, ``batch_sizes`` (size -> count), ``queue_length``, ``running``
    batches, ``partitions``, ``mean_batch_seconds``, and ``p50_latency`` / ``p99_latency``
    (seconds from arrival to answer, over the last 10,000 requests; None before any).

    Raises:
        nb.NoProc: this node has no serving of that name.
    """
    if isinstance(name, Pid):
        dest = name
    else:
        _check_name(name, "nb.serving.stats()")
        local = pg.local_members((GROUP, name))
        if not local:
            raise NoProc(f"nb.serving.stats(): this node has no serving named {name!r}")
        dest = local[0]
    return await call(dest, ("$serving_stats",), timeout=timeout)  # type: ignore[no-any-return]
