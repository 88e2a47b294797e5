"""nb.Pipeline: demand-driven, acknowledged, supervised stages (GenStage/Broadway for numbeam).

A pipeline is three kinds of processes:

- the **coordinator** (the pid `start_link` returns) owns the source and the record of every
  chunk of items in flight: it fetches from the source only what the processors' demand and
  the bounds allow, hands chunks of items to processors, forwards their results to the
  batcher, retries failures and acknowledges every item to the source exactly once;
- `concurrency` **processors**, each running ``handle_message`` on the items it was given.
  A processor asks for `max_demand` items when it starts; each report of results it sends
  back is its demand for as many more (it pulls; nothing is pushed past its demand);
- with ``handle_batch`` defined, one **batcher**, which gets at most `batch_size` results at
  a time and runs ``handle_batch`` on them when it holds `batch_size` or `batch_timeout`
  seconds after the first arrived.

Processors and the batcher run under an `nb.Supervisor` (one_for_one, restarted however
often) linked to the coordinator. The coordinator monitors each of them: when one dies
(killed, or the device worker it is pinned to is SIGKILLed), the chunks it held go back to
be processed again, and the supervisor starts a new one, which asks for demand afresh. A
chunk's items are acknowledged when its record leaves the stage that holds it, once; a
result from a process that no longer holds the chunk is ignored, so nothing is acknowledged
twice.

Bounds: items in the processor stage (queued, at processors, or results waiting for the
batcher) never exceed ``concurrency * max_demand``; the batcher holds at most `batch_size`;
fetched and not yet acknowledged items never exceed the sum of the two.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from numbeam.actors import (
    NoProc,
    Pid,
    StartError,
    Stop,
    _telemetry,
    call,
    demonitor,
    monitor,
    receive,
    reply,
    send,
    send_after,
    spawn,
    spawn_link,
    trap_exit,
    unlink,
)
from numbeam.actors import exit as nb_exit
from numbeam.actors._runtime import _current, _me, _rt
from numbeam.actors._types import CallError, Down, Exit
from numbeam.supervision import Child, Supervisor

from ._sources import check_source

__all__ = ["Pipeline", "stats", "stop", "wait"]

log = logging.getLogger("numbeam")

_SUMMARIES: Final = "pipeline.summaries"
_KEEP_SUMMARIES: Final = 1000  # summaries of ended pipelines kept per node, for late wait()s
_RESTARTS: Final = 2**31 - 1  # "restarted however often": the supervisor's intensity


class Pipeline:
    """Base class of a pipeline: subclass it and define ``async handle_message(item)``, and
    optionally ``async handle_batch(results)``.

    ``handle_message`` runs in one of `concurrency` processor processes; what it returns goes
    on to ``handle_batch`` (when defined), which gets lists of such results in a batcher
    process. A handler that raises fails the item (retried up to `max_retries` times, then
    acknowledged to the source as failed with the exception as its reason); it does not crash
    anything. Start one with ``await MyPipeline.start_link(source, ...)``; it can also be a
    supervisor's child: ``nb.Child(MyPipeline, args=(source,), kwargs={...})``.

    Processors pinned to devices (``devices=[...]``) run on those devices' workers, another
    OS process: the class is imported there by module path, and items and results cross as
    messages (msgpack, tensors by handle).
    """

    async def handle_message(self, item: Any) -> Any:
        """Process one item; the return value goes to `handle_batch`. Raise to fail it."""
        raise NotImplementedError(f"{type(self).__name__} defines no handle_message")

    async def handle_batch(self, results: list[Any]) -> None:
        """Optional: handle a list of `handle_message` results (up to `batch_size`)."""
        raise NotImplementedError

    @classmethod
    async def start_link(
        cls,
        source: Any,
        *,
        concurrency: int | None = None,
        batch_size: int = 100,
        batch_timeout: float = 1.0,
        max_demand: int = 10,
        max_retries: int = 0,
        devices: Sequence[str] | str | None = None,
        name: str | None = None,
    ) -> Pid:
        """Start the pipeline linked to the caller; return its (the coordinator's) pid once
        its processors and batcher are started.

        Args:
            source: an `nb.pipeline.Source` (``from_iterable(items)``, ``from_queue()``, a
                Redis stream...).
            concurrency: the number of processor processes. Default: the CPU count.
            batch_size: the most results in one ``handle_batch`` call.
            batch_timeout: seconds after its first result that a batch leaves, full or not.
            max_demand: the most items one processor holds at once.
            max_retries: how many times an item whose handler raised is tried again before it
                is acknowledged as failed.
            devices: None (processors in this node), a list of devices (``"fake:0"``,
                ``"cuda:1"``) over which processors are spread round-robin, or ``"all"``
                (this node's devices).
            name: register the pipeline under this name.

        Raises:
            TypeError, ValueError: a bad option or source (named in the message).
            nb.StartError: the processors could not be started.
        """
        return await _start(
            cls,
            source,
            True,
            concurrency,
            batch_size,
            batch_timeout,
            max_demand,
            max_retries,
            devices,
            name,
        )

    @classmethod
    async def start(cls, source: Any, **options: Any) -> Pid:
        """`start_link` without the link."""
        return await _start_opts(cls, source, False, **options)


async def _start_opts(
    cls: type[Pipeline],
    source: Any,
    link: bool,
    concurrency: int | None = None,
    batch_size: int = 100,
    batch_timeout: float = 1.0,
    max_demand: int = 10,
    max_retries: int = 0,
    devices: Sequence[str] | str | None = None,
    name: str | None = None,
) -> Pid:
    return await _start(
        cls,
        source,
        link,
        concurrency,
        batch_size,
        batch_timeout,
        max_demand,
        max_retries,
        devices,
        name,
    )


def _check_int(what: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Pipeline.start_link({what}=...) takes an int, got {value!r}")
    if value < low:
        raise ValueError(f"Pipeline.start_link({what}={value}): must be >= {low}")
    return value


def _check_devices(devices: Any, concurrency: int) -> list[str]:
    if devices is None:
        return []
    from numbeam.actors import devices as node_devices

    known = node_devices()
    if devices == "all":
        if not known:
            raise ValueError("Pipeline.start_link(devices='all'): this node has no devices")
        return known
    if isinstance(devices, str) or not isinstance(devices, Sequence):
        raise TypeError(
            f"Pipeline.start_link(devices=...) takes a list of devices or 'all', got {devices!r}"
        )
    devs = list(devices)
    if not devs:
        raise ValueError("Pipeline.start_link(devices=[]): give at least one device, or None")
    for d in devs:
        if not isinstance(d, str):
            raise TypeError(f"Pipeline.start_link(devices=...): a device is a str, got {d!r}")
        if d != "cpu" and d not in known:
            there = ", ".join(["cpu", *known])
            raise ValueError(
                f"Pipeline.start_link(devices=...): unknown device {d!r}; this node has: {there}"
            )
    return devs


async def _start(
    cls: type[Pipeline],
    source: Any,
    link: bool,
    concurrency: int | None,
    batch_size: int,
    batch_timeout: float,
    max_demand: int,
    max_retries: int,
    devices: Sequence[str] | str | None,
    name: str | None,
) -> Pid:
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise TypeError(f"start_link needs an nb.Pipeline subclass, got {cls!r}")
    if cls.handle_message is Pipeline.handle_message:
        raise TypeError(f"{cls.__name__} must define async handle_message(self, item)")
    for method in ("handle_message", "handle_batch"):
        if not inspect.iscoroutinefunction(getattr(cls, method)):
            raise TypeError(f"{cls.__name__}.{method} must be an async def")
    check_source(source)
    if concurrency is None:
        concurrency = os.cpu_count() or 1
    _check_int("concurrency", concurrency, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_demand", max_demand, 1)
    _check_int("max_retries", max_retries, 0)
    if isinstance(batch_timeout, bool) or not isinstance(batch_timeout, (int, float)):
        raise TypeError(
            f"Pipeline.start_link(batch_timeout=...) takes seconds, got {batch_timeout!r}"
        )
    if not (batch_timeout >= 0 and math.isfinite(batch_timeout)):
        raise ValueError(f"Pipeline.start_link(batch_timeout={batch_timeout}): must be >= 0")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"Pipeline.start_link(name=...) takes a str, got {name!r}")
    devs = _check_devices(devices, concurrency)
    me = _me(f"{cls.__name__}.start_link()")
    if name is not None:
        from numbeam.actors import whereis

        taken = whereis(name)
        if taken is not None:
            raise StartError(("already_started", taken), f"the name {name!r} is already taken")
    opts = {
        "concurrency": concurrency,
        "batch_size": batch_size,
        "batch_timeout": float(batch_timeout),
        "max_demand": max_demand,
        "max_retries": max_retries,
        "devices": devs,
        "name": name or cls.__name__,
    }
    ack = object()
    fn = spawn_link if link else spawn
    pid = fn(_coordinator, cls, source, opts, me.pid, ack, name=name)
    ref = monitor(pid)
    msg = await receive(
        lambda m: (
            (type(m) is tuple and len(m) == 3 and m[0] == "$pl_up" and m[1] is ack)
            or (type(m) is Down and m.ref == ref)
        )
    )
    if type(msg) is Down:
        raise StartError(msg.reason, f"{cls.__name__} exited while starting: {msg.reason!r}")
    if msg[2] is not None:
        await receive(lambda m: type(m) is Down and m.ref == ref)  # gone before we raise
    else:
        demonitor(ref, flush=True)
    if msg[2] is not None:
        raise StartError(msg[2], f"{cls.__name__} failed to start: {msg[2]!r}")
    return pid


# -- the stages -----------------------------------------------------------------------------


def _class_ref(cls: type[Pipeline]) -> str:
    from numbeam.transport._node import _function_path

    module, qualname = _function_path(cls, main_ok=True)
    return f"{module}:{qualname}"


def _resolve_class(ref: Any) -> type[Pipeline]:
    if isinstance(ref, type):
        return ref
    from numbeam.transport._node import import_path

    obj = import_path(*ref.partition(":")[::2])
    if not (isinstance(obj, type) and issubclass(obj, Pipeline)):
        raise TypeError(f"{ref} is not an nb.Pipeline subclass")
    return obj


async def _processor(coord: Pid, cls_ref: Any, keep_results: bool, max_demand: int) -> None:
    """A processor: ask for `max_demand` items, run ``handle_message`` on each chunk of items
    it is given, report the chunk's outcome (which is its demand for as many more). From a
    device's worker, the exceptions of failed items cross as `nb.RemoteError`."""
    handler = _resolve_class(cls_ref)()
    me = _current.get().pid
    send(coord, ("$pl_ask", me, max_demand))
    handle = handler.handle_message
    while True:
        msg = await receive()
        if type(msg) is not tuple or len(msg) != 3 or msg[0] != "$pl_items":
            continue
        values: list[Any] | None = None
        errors: list[Any] | None = None
        if keep_results:
            values = []
            for item in msg[2]:
                try:
                    values.append(await handle(item))
                except Exception as e:
                    if errors is None:
                        errors = []
                    errors.append((len(values), e))
                    values.append(None)
        else:
            for i, item in enumerate(msg[2]):
                try:
                    await handle(item)
                except Exception as e:
                    if errors is None:
                        errors = []
                    errors.append((i, e))
        send(coord, ("$pl_done", me, msg[1], values, errors))


async def _batcher(coord: Pid, cls: type[Pipeline], batch_size: int, timeout: float) -> None:
    """The batcher: collect results until `batch_size` or `timeout` seconds after the first
    (or a flush from the coordinator), run ``handle_batch``, report the outcome."""
    handler = cls()
    me = _current.get().pid
    loop = asyncio.get_running_loop()
    send(coord, ("$pl_ask_batch", me))
    chunks: list[int] = []
    values: list[Any] = []
    deadline = 0.0
    flush = False
    while True:
        if values and (flush or len(values) >= batch_size or loop.time() >= deadline):
            err: BaseException | None = None
            began = time.monotonic_ns()
            try:
                await handler.handle_batch(values)
            except Exception as e:
                err = e
            if _telemetry.handlers:
                _telemetry.execute(
                    ("numbeam", "pipeline", "batch"),
                    {
                        "system_time": time.time_ns(),
                        "size": len(values),
                        "duration": time.monotonic_ns() - began,
                    },
                    {"pipeline": coord, "batcher": me, "ok": err is None, "error": err},
                )
            send(coord, ("$pl_batched", me, chunks, err))
            chunks, values, flush = [], [], False
            continue
        try:
            msg = await receive(timeout=max(0.0, deadline - loop.time()) if values else None)
        except TimeoutError:
            continue
        if type(msg) is tuple and len(msg) == 3 and msg[0] == "$pl_batch":
            if not values:
                deadline = loop.time() + timeout
            chunks.append(msg[1])
            values.extend(msg[2])
        elif msg == "$pl_flush":
            flush = bool(values)


# -- the coordinator ------------------------------------------------------------------------


class _Chunk:
    """Items that travel together: fetched together, handed to one processor in one message,
    to the batcher in one message. `fails` counts each item's failed attempts (None: none);
    `values` are their results once processed."""

    __slots__ = ("fails", "items", "values")

    def __init__(self, items: list[Any], fails: list[int] | None = None) -> None:
        self.items = items
        self.fails = fails
        self.values: list[Any] | None = None

    def split(self, n: int) -> tuple[_Chunk, _Chunk]:
        """The first `n` items, and the rest."""
        fails = self.fails
        head = _Chunk(self.items[:n], None if fails is None else fails[:n])
        tail = _Chunk(self.items[n:], None if fails is None else fails[n:])
        if self.values is not None:
            head.values, tail.values = self.values[:n], self.values[n:]
        return head, tail


class _Stage:
    """A processor or the batcher as the coordinator sees it: the chunks it holds (by id) and
    how many more items it may be given."""

    __slots__ = ("free", "held", "ready", "ref")

    def __init__(self, free: int, ref: Any) -> None:
        self.free = free
        self.held: dict[int, _Chunk] = {}
        self.ref = ref
        self.ready = False


class _Coordinator:
    def __init__(self, cls: type[Pipeline], source: Any, opts: dict[str, Any], parent: Pid):
        self.cls = cls
        self.source = source
        self.parent = parent
        self.name: str = opts["name"]
        self.concurrency: int = opts["concurrency"]
        self.max_demand: int = opts["max_demand"]
        self.max_retries: int = opts["max_retries"]
        self.batch_size: int = opts["batch_size"]
        self.batch_timeout: float = opts["batch_timeout"]
        self.devices: list[str] = opts["devices"]
        self.batching = cls.handle_batch is not Pipeline.handle_batch
        self.chunk = self.max_demand  # items per message to a processor, at most
        self.free_total = 0  # the processors' demand, in items
        self.proc_bound = self.concurrency * self.max_demand
        self.bound = self.proc_bound + (self.batch_size if self.batching else 0)
        # while processors are busy, fetch only once half of their room is free
        self.min_fetch = max(self.chunk, self.proc_bound // 2)
        # the built-in sources' synchronous fast paths (no task per fetch or ack)
        self.fetch_now = getattr(source, "_fetch_now", None)
        self.ack_noop = getattr(source, "_ack_noop", False) is True
        self.me: Pid = _current.get().pid
        self.loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        self.sup: Pid | None = None
        self.next_id = 0
        # chunks waiting for a processor, and results waiting for the batcher (item counts)
        self.queue: deque[_Chunk] = deque()
        self.queued = 0
        self.waiting: deque[_Chunk] = deque()
        self.n_waiting = 0
        self.procs: dict[Pid, _Stage] = {}
        self.ready: deque[Pid] = deque()
        self.batchers: dict[Pid, _Stage] = {}
        self.in_procs = 0
        self.in_batch = 0
        self.out = 0  # fetched and not yet acknowledged to the source
        # acknowledgements not yet handed to the source, and how many are being handed now
        self.ack_ok: list[Any] = []
        self.ack_failed: list[tuple[Any, Any]] = []
        self.acking = 0
        self.ack_task: asyncio.Task[None] | None = None
        self.fetch_task: asyncio.Task[None] | None = None
        self.poll_delay = 0.0
        self.poll_timer: Any = None
        self.exhausted = False
        self.stopping = False
        self.exit_reason: Any = "normal"
        self.waiters: list[Any] = []
        self.fetched = 0
        self.ok = 0
        self.failed = 0
        self.retried = 0
        self.processed = 0
        self.batched = 0
        self.max_out = 0

    # -- bookkeeping

    def summary(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed, "retried": self.retried}

    def stats(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        acked = self.ok + self.failed
        return {
            "name": self.name,
            "fetched": self.fetched,
            "in_flight": self.out,
            "ok": self.ok,
            "failed": self.failed,
            "retried": self.retried,
            "queued": self.queued,
            "max_in_flight": self.max_out,
            "bound": self.bound,
            "elapsed_s": elapsed,
            "stages": {
                "processors": {
                    "count": len(self.procs),
                    "in_flight": self.in_procs,
                    "done": self.processed,
                    "per_s": self.processed / elapsed,
                },
                "batcher": {
                    "count": len(self.batchers),
                    "in_flight": self.in_batch,
                    "waiting": self.n_waiting,
                    "done": self.batched,
                    "per_s": self.batched / elapsed,
                },
                "acknowledged": {"done": acked, "per_s": acked / elapsed},
            },
            "processors": list(self.procs),
            "batchers": list(self.batchers),
            "exhausted": self.exhausted,
            "stopping": self.stopping,
        }

    def fail(self, item: Any, reason: Any, attempts: int) -> None:
        self.failed += 1
        self.ack_failed.append((item, reason))
        log.warning(
            "pipeline %s: item %.200r failed after %d attempt(s): %r",
            self.name,
            item,
            attempts,
            reason,
            extra={"numbeam_pipeline": self.name, "numbeam_reason": reason},
        )

    def sort_out(self, ch: _Chunk, errors: dict[int, Any]) -> tuple[_Chunk, _Chunk | None]:
        """Split a chunk whose items `errors` (index -> reason) failed: the ones that went
        through, and those to try again; the others are acknowledged as failed."""
        good: list[Any] = []
        good_fails: list[int] = []
        good_values: list[Any] = []
        again: list[Any] = []
        again_fails: list[int] = []
        values = ch.values
        for i, item in enumerate(ch.items):
            f = 0 if ch.fails is None else ch.fails[i]
            if i in errors:
                f += 1
                if f <= self.max_retries:
                    again.append(item)
                    again_fails.append(f)
                else:
                    self.fail(item, errors[i], f)
            else:
                good.append(item)
                good_fails.append(f)
                good_values.append(None if values is None else values[i])
        ok = _Chunk(good, good_fails)
        ok.values = good_values
        if not again:
            return ok, None
        self.retried += len(again)
        return ok, _Chunk(again, again_fails)

    # -- the stages' messages

    def on_ask(self, pid: Pid, n: int) -> None:
        if pid in self.procs:
            return
        st = self.procs[pid] = _Stage(n, monitor(pid))
        self.free_total += n
        st.ready = True
        self.ready.append(pid)

    def on_done(self, pid: Pid, cid: int, values: Any, errors: Any) -> None:
        st = self.procs.get(pid)
        if st is None:
            return
        ch = st.held.pop(cid, None)
        if ch is None:
            return  # not this processor's any more: never acknowledged twice
        n = len(ch.items)
        st.free += n
        self.free_total += n
        self.in_procs -= n
        ch.values = values
        if errors:
            ch, again = self.sort_out(ch, dict(errors))
            if again is not None:
                self.queue.append(again)
                self.queued += len(again.items)
        k = len(ch.items)
        self.processed += k
        if k:
            if self.batching:
                self.waiting.append(ch)
                self.n_waiting += k
            else:
                self.ok += k
                self.ack_ok.extend(ch.items)
        if not st.ready and st.free > 0:
            st.ready = True
            self.ready.append(pid)

    def on_ask_batch(self, pid: Pid) -> None:
        if pid not in self.batchers:
            self.batchers[pid] = _Stage(self.batch_size, monitor(pid))

    def on_batched(self, pid: Pid, cids: list[int], err: Any) -> None:
        st = self.batchers.get(pid)
        if st is None:
            return
        for cid in cids:
            ch = st.held.pop(cid, None)
            if ch is None:
                continue
            n = len(ch.items)
            st.free += n
            self.in_batch -= n
            if err is None:
                self.batched += n
                self.ok += n
                self.ack_ok.extend(ch.items)
                continue
            _, again = self.sort_out(ch, dict.fromkeys(range(n), err))
            if again is not None:
                again.values = ch.values
                self.waiting.append(again)
                self.n_waiting += len(again.items)

    def on_down(self, down: Down) -> bool:
        """A processor or batcher died: what it held goes back. False if it was neither."""
        st = self.procs.pop(down.pid, None)
        if st is not None:
            self.free_total -= st.free
            for ch in reversed(st.held.values()):
                n = len(ch.items)
                self.in_procs -= n
                self.retried += n
                self.queued += n
                self.queue.appendleft(ch)
            return True
        st = self.batchers.pop(down.pid, None)
        if st is not None:
            for ch in reversed(st.held.values()):
                n = len(ch.items)
                self.in_batch -= n
                self.retried += n
                self.n_waiting += n
                self.waiting.appendleft(ch)
            return True
        return False

    # -- moving items

    def _hand(self, q: deque[_Chunk], st: _Stage) -> tuple[int, _Chunk, int]:
        """The next chunk of `q`, cut to what `st` may still take (the rest stays first in
        `q`), now held by `st` under a new id: (id, chunk, its item count)."""
        ch = q.popleft()
        n = len(ch.items)
        if n > st.free:
            ch, rest = ch.split(st.free)
            q.appendleft(rest)
            n = st.free
        cid = self.next_id
        self.next_id += 1
        st.held[cid] = ch
        st.free -= n
        return cid, ch, n

    def dispatch(self) -> None:
        queue, ready, procs = self.queue, self.ready, self.procs
        while queue and ready:
            pid = ready[0]
            st = procs.get(pid)
            if st is None or st.free <= 0:
                ready.popleft()
                if st is not None:
                    st.ready = False
                continue
            cid, ch, n = self._hand(queue, st)
            self.queued -= n
            self.free_total -= n
            self.in_procs += n
            send(pid, ("$pl_items", cid, ch.items))
            ready.popleft()
            if st.free > 0:
                ready.append(pid)
            else:
                st.ready = False
        waiting = self.waiting
        if waiting and self.batchers:
            for pid, b in self.batchers.items():
                while waiting and b.free > 0:
                    cid, ch, n = self._hand(waiting, b)
                    self.n_waiting -= n
                    self.in_batch += n
                    b.ready = False
                    send(pid, ("$pl_batch", cid, ch.values))
        if (
            (self.exhausted or self.stopping)
            and not self.queued
            and not self.in_procs
            and not self.n_waiting
        ):
            for pid, b in self.batchers.items():
                if b.held and not b.ready:  # (for a batcher, ready: flush sent)
                    b.ready = True
                    send(pid, "$pl_flush")

    def demand(self) -> int:
        """How many items to fetch now: what the processors ask for beyond what is queued,
        within the bounds. Small demands wait for more while processors are busy, so that
        fetches (and their round trips to a broker) come in chunks."""
        free = self.free_total - self.queued
        room = self.proc_bound - (self.queued + self.in_procs + self.n_waiting)
        n = min(free, room, self.bound - self.out)
        if n < self.min_fetch and (self.queued or self.in_procs):
            return 0
        return n

    def maybe_fetch(self) -> None:
        if self.exhausted or self.stopping or self.fetch_task is not None:
            return
        if self.poll_timer is not None:
            return
        n = self.demand()
        if n <= 0:
            return
        if self.fetch_now is not None:
            self.on_fetched(n, self.fetch_now(n), None)
        else:
            self.fetch_task = self.loop.create_task(self._fetch(n))

    async def _fetch(self, n: int) -> None:
        try:
            got = await self.source.fetch(n)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            send(self.me, ("$pl_fetched", n, None, e))
            return
        send(self.me, ("$pl_fetched", n, got, None))

    def on_fetched(self, n: int, got: Any, err: Any) -> None:
        self.fetch_task = None
        if err is not None:
            raise err
        if got is None:
            self.exhausted = True
            return
        if not isinstance(got, (list, tuple)):
            raise TypeError(
                f"pipeline {self.name}: {self.source!r}.fetch() returned {got!r}; it must "
                "return a list of items, [] for none yet, or None when exhausted"
            )
        k = len(got)
        if k > n:
            raise ValueError(
                f"pipeline {self.name}: {self.source!r}.fetch({n}) returned {k} items, "
                "more than it was asked for"
            )
        if not k:
            # none yet: ask again later, a little later each time (up to 0.2 s)
            self.poll_delay = min(0.2, max(0.002, self.poll_delay * 2))
            self.poll_timer = send_after(self.poll_delay, self.me, "$pl_poll")
            return
        self.poll_delay = 0.0
        self.fetched += k
        self.out += k
        self.queued += k
        size = self.chunk
        if k <= size:
            self.queue.append(_Chunk(got if type(got) is list else list(got)))
        else:
            for i in range(0, k, size):
                self.queue.append(_Chunk(list(got[i : i + size])))
        if self.out > self.max_out:
            self.max_out = self.out

    def maybe_ack(self) -> None:
        if self.ack_task is not None or not (self.ack_ok or self.ack_failed):
            return
        ok, failed = self.ack_ok, self.ack_failed
        self.ack_ok, self.ack_failed = [], []
        if self.ack_noop:
            self.out -= len(ok) + len(failed)
            return
        self.acking = len(ok) + len(failed)
        self.ack_task = self.loop.create_task(self._ack(ok, failed))

    async def _ack(self, ok: list[Any], failed: list[tuple[Any, Any]]) -> None:
        try:
            await self.source.ack(ok, failed)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            send(self.me, ("$pl_acked", e))
            return
        send(self.me, ("$pl_acked", None))

    def finished(self) -> bool:
        return (
            (self.exhausted or self.stopping)
            and self.fetch_task is None
            and self.ack_task is None
            and self.out == 0
        )

    # -- the loop

    async def run(self, ack: Any) -> None:
        trap_exit(True)
        try:
            self.sup = await Supervisor.start_link(
                self.children(), strategy="one_for_one", intensity=_RESTARTS, period=1.0
            )
        except Exception as e:
            unlink(self.parent)  # the starter learns of it from StartError, not by dying
            send(self.parent, ("$pl_up", ack, e))
            raise
        send(self.parent, ("$pl_up", ack, None))
        try:
            await self.loop_until_done()
        finally:
            for task in (self.fetch_task, self.ack_task):
                if task is not None:
                    task.cancel()
        await self.shutdown()
        summary = self.summary()
        _store(self.me, summary)
        for caller in self.waiters:
            reply(caller, summary)
        if self.exit_reason != "normal":
            raise Stop(self.exit_reason)

    async def loop_until_done(self) -> None:
        while True:
            self.dispatch()
            self.maybe_fetch()
            self.maybe_ack()
            if self.finished():
                return
            if self.queue and self.ready:
                continue  # a synchronous fetch gave items a processor can take now
            msg = await receive()
            t = type(msg)
            if t is tuple:
                tag = msg[0]
                if tag == "$pl_done":
                    self.on_done(msg[1], msg[2], msg[3], msg[4])
                elif tag == "$pl_fetched":
                    self.on_fetched(msg[1], msg[2], msg[3])
                elif tag == "$pl_acked":
                    self.ack_task = None
                    self.out -= self.acking
                    self.acking = 0
                    if msg[1] is not None:
                        raise msg[1]
                elif tag == "$pl_batched":
                    self.on_batched(msg[1], msg[2], msg[3])
                elif tag == "$pl_ask":
                    self.on_ask(msg[1], msg[2])
                elif tag == "$pl_ask_batch":
                    self.on_ask_batch(msg[1])
                elif tag == "$gen_call" and len(msg) == 3:
                    self.on_call(msg[1], msg[2])
            elif t is Down:
                self.on_down(msg)
            elif t is Exit:
                self.on_exit(msg)
            elif msg == "$pl_poll":
                self.poll_timer = None

    def on_call(self, caller: Any, request: Any) -> None:
        if request == "$pl_stats":
            reply(caller, self.stats())
        elif request == "$pl_wait":
            self.waiters.append(caller)
        elif request == "$pl_stop":
            self.begin_stop()
            self.waiters.append(caller)
        else:
            reply(caller, ("error", f"unknown pipeline request {request!r}"))

    def begin_stop(self) -> None:
        self.stopping = True
        if self.fetch_task is not None:
            # A fetch in progress is abandoned; whatever it had already returned is in the
            # mailbox and gets processed like the rest.
            self.fetch_task.cancel()
            self.fetch_task = None

    def on_exit(self, msg: Exit) -> None:
        if msg.pid == self.parent:
            if msg.reason == "normal":
                return
            self.exit_reason = msg.reason  # drain what is in flight, then exit with it
            self.begin_stop()
        elif msg.pid == self.sup:
            raise Stop(msg.reason)

    def children(self) -> list[Child]:
        out = []
        devs = self.devices
        for i in range(self.concurrency):
            dev = devs[i % len(devs)] if devs else None
            if dev is None or dev == "cpu":
                args: tuple[Any, ...] = (self.me, self.cls, self.batching, self.max_demand)
                dev = None
            else:
                args = (self.me, _class_ref(self.cls), self.batching, self.max_demand)
            out.append(
                Child(_processor, args=args, id=f"processor{i}", device=dev, shutdown="brutal_kill")
            )
        if self.batching:
            out.append(
                Child(
                    _batcher,
                    args=(self.me, self.cls, self.batch_size, self.batch_timeout),
                    id="batcher",
                    shutdown="brutal_kill",
                )
            )
        return out

    async def shutdown(self) -> None:
        sup = self.sup
        if sup is not None:
            ref = monitor(sup)
            nb_exit(sup, "shutdown")
            await receive(lambda m: type(m) is Down and m.ref == ref)
            try:
                await receive(lambda m: type(m) is Exit and m.pid == sup, timeout=0)
            except TimeoutError:
                pass
        for st in (*self.procs.values(), *self.batchers.values()):
            demonitor(st.ref, flush=True)
        aclose = getattr(self.source, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.exception("pipeline %s: closing its source %r failed", self.name, self.source)


async def _coordinator(
    cls: type[Pipeline], source: Any, opts: dict[str, Any], parent: Pid, ack: Any
) -> None:
    _current.get().fn = cls  # crash reports and process_info name the pipeline class
    try:
        coordinator = _Coordinator(cls, source, opts, parent)
    except Exception as e:
        unlink(parent)  # the starter learns of it from StartError, not by dying
        send(parent, ("$pl_up", ack, e))
        raise
    await coordinator.run(ack)


# -- ended pipelines' summaries, for wait() after the end -----------------------------------


def _store(pid: Pid, summary: dict[str, int]) -> None:
    rt = _rt()
    done = rt.extensions.setdefault(_SUMMARIES, {})
    done[pid] = summary
    while len(done) > _KEEP_SUMMARIES:
        del done[next(iter(done))]


def _stored(pid: Any) -> dict[str, int] | None:
    done = _rt().extensions.get(_SUMMARIES) or {}
    return done.get(pid) if type(pid) is Pid else None


def _resolve(pid: Any, what: str) -> Any:
    if isinstance(pid, str):
        from numbeam.actors import whereis

        found = whereis(pid)
        if found is None:
            raise NoProc(f"{what}: no pipeline is registered as {pid!r}")
        return found
    if type(pid) is not Pid:
        raise TypeError(f"{what} takes a pipeline's pid or registered name, got {pid!r}")
    return pid


async def _request(pid: Any, request: str, what: str, timeout: float | None) -> Any:
    """Call the pipeline with `request` (it replies with its summary as it ends), then wait
    for it to be gone, so that it has exited when this returns."""
    pid = _resolve(pid, what)
    ref = monitor(pid)
    try:
        summary = await call(pid, request, timeout=timeout)
    except (NoProc, CallError) as e:
        demonitor(ref, flush=True)
        stored = _stored(pid)
        if stored is not None:
            return dict(stored)
        if isinstance(e, CallError):
            raise CallError(e.reason, f"{what}: the pipeline exited with {e.reason!r}") from None
        raise
    except BaseException:
        demonitor(ref, flush=True)
        raise
    await receive(lambda m: type(m) is Down and m.ref == ref, timeout=timeout)
    return summary


async def wait(pid: Pid | str, timeout: float | None = None) -> dict[str, int]:
    """Wait until the pipeline has acknowledged everything and ended; its summary,
    ``{"ok": n, "failed": n, "retried": n}`` (also when it had already ended).

    Raises:
        TimeoutError: it did not end within `timeout` seconds (None waits for ever).
        nb.NoProc: no such pipeline, and none ended under this pid.
        nb.CallError: it crashed (``.reason``).
    """
    return await _request(pid, "$pl_wait", "nb.pipeline.wait()", timeout)  # type: ignore[no-any-return]


async def stop(pid: Pid | str, timeout: float | None = None) -> dict[str, int]:
    """Stop the pipeline gracefully: it fetches nothing more, finishes and acknowledges what
    is in flight, then exits with ``"normal"``; its summary (as `wait`)."""
    return await _request(pid, "$pl_stop", "nb.pipeline.stop()", timeout)  # type: ignore[no-any-return]


async def stats(pid: Pid | str, timeout: float | None = 5.0) -> dict[str, Any]:
    """A live pipeline's counters: ``fetched``, ``in_flight`` (fetched, not yet acknowledged),
    ``ok``, ``failed``, ``retried``, ``queued``, ``max_in_flight`` and its ``bound``,
    ``stages`` (per stage: items done and ``per_s`` throughput since the start), and the pids
    of its ``processors`` and ``batchers``.

    Raises:
        nb.NoProc: the pipeline is not running.
    """
    pid = _resolve(pid, "nb.pipeline.stats()")
    try:
        return await call(pid, "$pl_stats", timeout=timeout)  # type: ignore[no-any-return]
    except CallError as e:
        raise NoProc(f"nb.pipeline.stats(): pipeline {pid!r} exited ({e.reason!r})") from None
