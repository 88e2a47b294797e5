"""`nb.Serving`: a GenServer that gathers requests into batches and runs `predict` on them in
its partitions.

Process layout. The serving is one GenServer (registered under its name, joined to the process
group ``("numbeam.serving", name)`` so that any node finds it) that owns the queue and decides
when a batch leaves (`_policy.Batcher`). Each *partition* is a process linked to it that runs
one batch at a time: `_partition`, on this node, or on a device's worker with
``devices=[...]``, where the batch arrives as tensors already in that device's memory. Keeping
`predict` out of the serving's own process means the queue keeps filling, and overload is
refused, while batches run; a plain `predict` runs in a thread (`_sync.run_sync`), an
``async def`` in its partition's process.

Failure. The serving traps exits: a partition that dies (its worker killed) fails only the
batch it held, with `nb.CallError`, and is started again; more than `MAX_PARTITION_RESTARTS`
in `PARTITION_PERIOD` seconds stop the serving, for its supervisor to decide. A `predict` that
raises fails its batch and nothing else. When the serving itself exits, its partitions are
killed and every caller waiting on it gets `nb.CallError` from its monitor.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numbeam.actors import (
    NOREPLY,
    CallError,
    Exit,
    GenServer,
    Pid,
    Stop,
    _telemetry,
    devices,
    exit,
    is_normal_exit,
    node,
    receive,
    reply,
    send,
    send_after,
    spawn_link,
    trap_exit,
)
from numbeam.actors import self as self_pid
from numbeam.transport import pg

from ._arrays import describe, portable, signature, split, stack
from ._policy import Batcher, Item, Request, split_by_signature
from ._sync import run_sync

__all__ = ["GROUP", "Serving"]

log = logging.getLogger("numbeam.serving")

GROUP = "numbeam.serving"  # each serving joins the process group (GROUP, name)
MAX_PARTITION_RESTARTS = 5
PARTITION_PERIOD = 5.0
LATENCY_WINDOW = 10_000  # stats' percentiles are over the last this many answered requests


def _resolve(predict: Any) -> Callable[..., Any]:
    """`predict` itself, or the function a ``"module:qualname"`` string names."""
    if callable(predict):
        return predict  # type: ignore[no-any-return]
    from numbeam.transport._node import import_path

    obj = import_path(*predict.partition(":")[::2])
    if not callable(obj):
        raise TypeError(f"nb.Serving: {predict!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _path(predict: Any) -> str:
    """``"module:qualname"`` by which a worker or another node imports `predict`."""
    if isinstance(predict, str):
        return predict
    from numbeam.transport._node import _function_path

    try:
        module, qualname = _function_path(predict, main_ok=True)
    except TypeError:
        raise TypeError(
            f"nb.Serving: predict {predict!r} must be a module-level function to run on a device "
            "worker or another node (a lambda or a nested function cannot be imported there)"
        ) from None
    return f"{module}:{qualname}"


async def _partition(serving: Pid, index: int, predict: Any) -> None:
    """One partition: run `predict` on each batch the serving sends, answer with the output
    or the exception (a thread for a plain function; this process for an ``async def``)."""
    fn = _resolve(predict)
    is_async = inspect.iscoroutinefunction(fn)
    while True:
        _, bid, batch = await receive()
        try:
            out = (await fn(batch)) if is_async else (await run_sync(fn, batch))
            answer: tuple[Any, ...] = ("$serving_done", bid, index, True, portable(out))
        except Exception as e:
            answer = ("$serving_done", bid, index, False, e)
        del batch
        try:
            send(serving, answer)
        except TypeError as e:  # an output that cannot cross to the serving's node
            send(serving, ("$serving_done", bid, index, False, TypeError(str(e))))


@dataclass(eq=False, slots=True)
class _Partition:
    index: int
    device: str | None
    pid: Pid | None = None
    batch: tuple[int, list[Item], float] | None = None  # (batch id, its inputs, start time)
    restarts: collections.deque[float] = field(default_factory=collections.deque)


def _check_int(value: Any, what: str, minimum: int = 1) -> int:
    if type(value) is not int or value < minimum:
        raise ValueError(f"nb.Serving: {what} must be an int >= {minimum}, got {value!r}")
    return value


def _check_devices(value: Any) -> list[str] | str | None:
    if value is None or value == "all":
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(
            f'nb.Serving: devices is None, "all" or a list of device names, got {value!r}'
        )
    if not value or not all(isinstance(d, str) for d in value):
        raise ValueError(f"nb.Serving: devices must name at least one device, got {value!r}")
    return list(value)


class Serving(GenServer):
    """A batched model server (Nx.Serving for numbeam): ``await nb.serving.run(name, x)``
    from any process of the cluster gets `predict`'s output row for `x`, computed in a batch
    with other callers' inputs.

    Start it with `start_link` (or `start`), or as a supervisor child:
    ``nb.Child(nb.Serving, args=(predict,), kwargs={"name": "model", "batch_size": 64})``.
    See `start_link` for the options and `numbeam.serving` for the calls.
    """

    @classmethod
    async def start_link(  # type: ignore[override]
        cls,
        predict: Callable[..., Any] | str,
        *,
        name: str,
        batch_size: int = 32,
        batch_timeout: float = 0.01,
        partitions: int = 1,
        devices: list[str] | str | None = None,
        max_queue: int = 1024,
        node: str | None = None,
        device: str | None = None,
    ) -> Pid:
        """Start a serving linked to the caller; it serves once this returns.

        Args:
            predict: ``predict(batch) -> output``, a plain function (run in a thread, with
                BLAS/OpenMP threads limited to one) or an ``async def``. `batch` holds the
                inputs stacked on a new axis 0 (a numpy array, an `nb.Tensor` for tensor
                inputs or on a device, or a tuple/dict of those as the inputs are); the output
                has the same first axis (an array, a tensor, or a tuple/dict of them). It may
                be given as ``"module:function"``, and must be a module-level function with
                `devices` or `node`.
            name: the serving's name: registered on its node, and how `nb.serving.run` finds
                it anywhere in the cluster.
            batch_size: the most inputs in one batch.
            batch_timeout: seconds a batch waits for more inputs after its first one arrived.
            partitions: batches run at once (per device with `devices`).
            devices: run the partitions on these devices' workers (``["fake:0", "cuda:1"]``)
                or on every device of the node (``"all"``); the batch arrives as tensors
                already in the device's memory. None: on this node.
            max_queue: the most inputs waiting; a request beyond it raises `nb.Overloaded`.
            node, device: start the serving itself on that node (or device worker).

        Raises:
            TypeError, ValueError: an option is not valid (named in the message).
            nb.StartError: the serving failed to start (an unknown device, a name taken).
        """
        options = cls._options(
            predict, name, batch_size, batch_timeout, partitions, devices, max_queue, node or device
        )
        return await super().start_link(name=name, node=node, device=device, **options)

    @classmethod
    async def start(  # type: ignore[override]
        cls,
        predict: Callable[..., Any] | str,
        *,
        name: str,
        batch_size: int = 32,
        batch_timeout: float = 0.01,
        partitions: int = 1,
        devices: list[str] | str | None = None,
        max_queue: int = 1024,
        node: str | None = None,
        device: str | None = None,
    ) -> Pid:
        """As `start_link`, without the link."""
        options = cls._options(
            predict, name, batch_size, batch_timeout, partitions, devices, max_queue, node or device
        )
        return await super().start(name=name, node=node, device=device, **options)

    @staticmethod
    def _options(
        predict: Any,
        name: Any,
        batch_size: Any,
        batch_timeout: Any,
        partitions: Any,
        devices: Any,
        max_queue: Any,
        elsewhere: str | None,
    ) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise TypeError(f"nb.Serving: name must be a non-empty str, got {name!r}")
        if not (callable(predict) or (isinstance(predict, str) and ":" in predict)):
            raise TypeError(
                f"nb.Serving: predict must be a function or 'module:function', got {predict!r}"
            )
        if (
            isinstance(batch_timeout, bool)
            or not isinstance(batch_timeout, (int, float))
            or not batch_timeout >= 0
        ):
            raise ValueError(
                f"nb.Serving: batch_timeout must be seconds >= 0, got {batch_timeout!r}"
            )
        devices = _check_devices(devices)
        remote = elsewhere is not None  # started on another node or a device worker
        predict = _path(predict) if remote or devices is not None else predict
        if devices is not None and not remote:
            Serving._devices(devices)  # an unknown device: ValueError here, before starting
        return {
            "predict": predict,
            "serving": name,
            "batch_size": _check_int(batch_size, "batch_size"),
            "batch_timeout": float(batch_timeout),
            "partitions": _check_int(partitions, "partitions"),
            "devices": devices,
            "max_queue": _check_int(max_queue, "max_queue"),
        }

    # ---- the server ---------------------------------------------------------------------

    async def init(
        self,
        predict: Any,
        serving: str,
        batch_size: int,
        batch_timeout: float,
        partitions: int,
        devices: list[str] | str | None,
        max_queue: int,
    ) -> None:
        self.name = serving
        self.predict = predict
        self.batcher = Batcher(batch_size, batch_timeout, max_queue)
        self.requests: dict[Any, Request] = {}
        self.time = time.monotonic  # (uvloop's loop.time() has 1 ms steps: too coarse for stats)
        self.last_signature: Hashable | None = None
        self.batch_ids = itertools.count(1)
        self.timer_at: float | None = None  # when the armed tick fires (None: none armed)
        self.tick = 0
        # statistics
        self.answered = self.failed = self.refused = self.batches = self.inputs_run = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.compute = 0.0
        on = self._devices(devices)
        # Imported here first, so that a wrong "module:function" fails the start (StartError)
        # instead of every partition; local partitions get the function itself.
        self.local_predict = _resolve(predict)
        self.parts = [
            _Partition(i, d) for i, d in enumerate([d for d in on for _ in range(partitions)])
        ]
        trap_exit(True)
        for part in self.parts:
            self._spawn(part)
        self.idle = [p.index for p in reversed(self.parts)]
        pg.join((GROUP, serving), self_pid())

    @staticmethod
    def _devices(value: list[str] | str | None) -> list[str | None]:
        if value is None:
            return [None]
        have = devices()
        if value == "all":
            if not have:
                raise ValueError(
                    'nb.Serving: devices="all" but this node has no devices (see the node '
                    "option devices, and NUMBEAM_FAKE_DEVICES)"
                )
            return list(have)
        unknown = [d for d in value if d not in have]
        if unknown:
            raise ValueError(
                f"nb.Serving: unknown devices {unknown}; this node has: {have or 'none'}"
            )
        return list(value)

    def _spawn(self, part: _Partition) -> None:
        if part.device is None:
            part.pid = spawn_link(_partition, self_pid(), part.index, self.local_predict)
        else:
            part.pid = spawn_link(
                _partition, self_pid(), part.index, self.predict, device=part.device
            )

    async def handle_call(self, request: Any, caller: Any) -> Any:
        if type(request) is tuple and request and request[0] == "$serving_run":
            return self._admit(request[1], request[2], caller)
        if request == ("$serving_stats",):
            return self._stats()
        return ("error", ValueError(f"nb.Serving {self.name!r}: unknown call {request!r}"))

    async def handle_cast(self, request: Any) -> None:
        if type(request) is tuple and len(request) == 2 and request[0] == "$serving_cancel":
            req = self.requests.pop(request[1], None)
            if req is not None and not req.done:
                self.batcher.withdraw(req)  # a timed-out caller: its queued inputs leave
            return
        log.warning("nb.Serving %r: unexpected cast %r", self.name, request)

    async def handle_info(self, msg: Any) -> None:
        if type(msg) is tuple and msg:
            tag = msg[0]
            if tag == "$serving_done":
                self._done(*msg[1:])
                return
            if tag == "$serving_tick":
                if msg[1] == self.tick:
                    self.timer_at = None
                    self._pump()
                return
        if type(msg) is Exit:
            part = next((p for p in self.parts if p.pid == msg.pid), None)
            if part is not None:
                self._partition_exited(part, msg.reason)
                return
            if not is_normal_exit(msg.reason):  # a linked process died: as if not trapping
                raise Stop(msg.reason)
            return
        log.warning("nb.Serving %r: unexpected message %r", self.name, msg)

    async def terminate(self, reason: Any) -> None:
        for part in self.parts:
            if part.pid is not None:
                exit(part.pid, "kill")

    # ---- requests in ----------------------------------------------------------------------

    def _admit(self, rid: Any, xs: Sequence[Any], caller: Any) -> Any:
        n = len(xs)
        if not self.batcher.admits(n):
            self.refused += 1
            return (
                "overloaded",
                f"serving {self.name!r} on {node()}: {self.batcher.waiting} inputs wait "
                f"(max_queue={self.batcher.max_queue}), {n} more refused",
            )
        try:
            pairs = [signature(x, f"input {i}" if n > 1 else "the input") for i, x in enumerate(xs)]
        except TypeError as e:
            self.failed += 1
            return ("error", e)
        req = Request((caller, rid), n, self.time())
        self.requests[rid] = req
        self.batcher.add(req, [v for _, v in pairs], [s for s, _ in pairs])
        self._pump()
        return NOREPLY

    def _pump(self) -> None:
        """Start every batch that should leave now while a partition is free; arm the tick
        for the next deadline."""
        now = self.time()
        while self.idle and self.batcher.ready(now + 1e-4):
            items = self.batcher.take()
            if items:
                self._launch(items, now)
        deadline = self.batcher.deadline()
        if deadline is None or not self.idle:
            return  # nothing waits, or a partition's answer will pump again
        if self.timer_at is not None and self.timer_at <= deadline:
            return  # the armed tick comes first; it re-arms
        self.tick += 1
        self.timer_at = deadline
        send_after(max(0.0, deadline - now), self_pid(), ("$serving_tick", self.tick))

    def _launch(self, items: list[Item], now: float) -> None:
        sig, fitting, misfits = split_by_signature(items, self.last_signature)
        for item in misfits:
            where = f"input {item.index}" if item.request.n > 1 else "the input"
            self._fail(
                item.request,
                ValueError(
                    f"nb.serving: {where} is {describe(item.signature)}, which does not stack "
                    f"with its batch of {describe(sig)} (serving {self.name!r}): inputs of one "
                    "serving must have the same shape and dtype"
                ),
            )
        fitting = [i for i in fitting if not i.request.done]
        if not fitting:
            return
        part = self.parts[self.idle.pop()]
        try:
            batch = stack([i.value for i in fitting], sig, part.device)
        except Exception as e:
            self.idle.append(part.index)
            for item in fitting:
                self._fail(item.request, e)
            return
        self.last_signature = sig
        bid = next(self.batch_ids)
        part.batch = (bid, fitting, now)
        assert part.pid is not None
        send(part.pid, ("$serving_batch", bid, batch))

    # ---- answers out ----------------------------------------------------------------------

    def _done(self, bid: int, index: int, ok: bool, out: Any) -> None:
        part = self.parts[index]
        if part.batch is None or part.batch[0] != bid:
            return  # from a partition since restarted
        _, items, started = part.batch
        part.batch = None
        self.idle.append(index)
        now = self.time()
        n = len(items)
        rows: list[Any] = []
        if ok:
            try:
                rows = split(out, n)
            except (TypeError, ValueError) as e:
                ok, out = False, e
        self.batches += 1
        self.inputs_run += n
        self.batch_sizes[n] += 1
        self.compute += now - started
        log.debug(
            "serving %r: batch %d of %d on partition %d%s: %.2f ms%s",
            self.name,
            bid,
            n,
            index,
            f" ({part.device})" if part.device else "",
            (now - started) * 1e3,
            "" if ok else f", failed: {out!r}",
        )
        if _telemetry.handlers:
            _telemetry.execute(
                ("numbeam", "serving", "batch"),
                {
                    "system_time": time.time_ns(),
                    "size": n,
                    "duration": int((now - started) * 1e9),
                    "queue_length": self.batcher.waiting,
                },
                {
                    "name": self.name,
                    "serving": self_pid(),
                    "partition": index,
                    "device": part.device,
                    "ok": ok,
                    "error": None if ok else out,
                },
            )
        if ok:
            for item, row in zip(items, rows, strict=True):
                req = item.request
                if req.done:
                    continue
                req.rows[item.index] = row
                req.left -= 1
                if req.left == 0:
                    self._answer(req, ("ok", req.rows, self.batcher.waiting), now)
        else:
            for item in items:
                self._fail(item.request, out)
        self._pump()

    def _answer(self, req: Request, answer: Any, now: float) -> None:
        req.done = True
        caller, rid = req.key
        self.requests.pop(rid, None)
        reply(caller, answer)
        self.latencies.append(now - req.arrived)
        self.answered += 1

    def _fail(self, req: Request, exc: BaseException) -> None:
        if req.done:
            return
        self.batcher.withdraw(req)
        caller, rid = req.key
        self.requests.pop(rid, None)
        reply(caller, ("error", exc))
        self.failed += 1

    def _partition_exited(self, part: _Partition, reason: Any) -> None:
        where = part.device or node()
        if part.batch is not None:
            _, items, _ = part.batch
            part.batch = None
            err = CallError(
                reason,
                f"nb.serving: the partition of serving {self.name!r} on {where} that ran this "
                f"batch exited: {reason!r}",
            )
            for item in items:
                self._fail(item.request, err)
        else:
            self.idle.remove(part.index)
        now = self.time()
        part.restarts.append(now)
        while part.restarts and part.restarts[0] < now - PARTITION_PERIOD:
            part.restarts.popleft()
        if len(part.restarts) > MAX_PARTITION_RESTARTS:
            raise Stop(("partition_failed", where, reason))
        log.warning(
            "nb.Serving %r: partition %d on %s exited (%r); starting it again",
            self.name,
            part.index,
            where,
            reason,
        )
        self._spawn(part)
        self.idle.append(part.index)
        self._pump()

    def _stats(self) -> dict[str, Any]:
        lat = np.fromiter(self.latencies, float, len(self.latencies))
        p50, p99 = np.percentile(lat, [50, 99]).tolist() if len(lat) else (None, None)
        return {
            "name": self.name,
            "node": node(),
            "requests": self.answered,
            "inputs": self.inputs_run,
            "failed": self.failed,
            "overloaded": self.refused,
            "batches": self.batches,
            "mean_batch_size": self.inputs_run / self.batches if self.batches else 0.0,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "queue_length": self.batcher.waiting,
            "running": len(self.parts) - len(self.idle),
            "partitions": [p.device or "cpu" for p in self.parts],
            "mean_batch_seconds": self.compute / self.batches if self.batches else 0.0,
            "p50_latency": p50,
            "p99_latency": p99,
        }
