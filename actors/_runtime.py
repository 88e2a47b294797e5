"""The node's scheduler: processes, mailboxes, links, monitors, exit signals, names and timers.

A process is an ordinary asyncio Task running the user's coroutine in its own context, where a
context variable names the process; so any asyncio awaitable works inside it, and killing it
is cancelling its task. What makes message passing fast is how a process parked in `receive`
is woken. Its task awaits the process record itself, a duck-typed asyncio future (the
`_asyncio_future_blocking` protocol Task already honours), which hands the runtime the task's
wake-up callback. `send` appends to the target's mailbox and, if the target is parked, pushes
it on the runtime's run queue; the run queue is drained in one event-loop callback, so a ping-pong
between two processes runs back and forth inside that callback instead of paying one loop
iteration per message. The drain stops after `run_queue_budget` wake-ups (BEAM's reductions)
so I/O still gets its turn. Everything else (first steps, asyncio sleeps, sockets) goes
through the loop as usual.

Timeouts cost nothing until they fire. A receive that finds its message arms no timer; a
process that parks with a timeout only notes it, and once the run queue is drained the runtime
puts the deadlines of those still waiting in a heap of its own, with one loop timer for the
earliest (`send_after` and `nb.call` use the same heap). A wait that ends leaves its entry to
be dropped when it comes up (lazy cancellation), and the heap is compacted as it grows.

Messages stay in the mailbox until `receive` takes them, so a receive that is cancelled after
being woken leaves the mailbox exactly as it was. Exit handling runs from the task's done
callback: it unregisters the process, sends exit signals along its links and `Down` messages
to its monitors, and cancels its timers.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import inspect
import itertools
import logging
import os
import secrets
import sys
import time
import traceback
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from . import _telemetry
from ._options import NodeOptions
from ._types import LOCAL_NODE, Down, Exit, NoProc, Pid, Ref, Stop, TimerRef

if TYPE_CHECKING:
    from numbeam.transport._node import Distribution

__all__ = [
    "Runtime",
    "cancel_timer",
    "demonitor",
    "device",
    "devices",
    "exit",
    "is_alive",
    "link",
    "monitor",
    "node",
    "process_info",
    "processes",
    "receive",
    "register",
    "registered",
    "run",
    "self",
    "send",
    "send_after",
    "spawn",
    "spawn_link",
    "spawn_monitor",
    "trap_exit",
    "unlink",
    "unregister",
    "whereis",
]

log = logging.getLogger("numbeam")

T = TypeVar("T")
Dest = Pid | str | tuple[str, str]
Match = type | tuple[type, ...] | Callable[[Any], bool] | None

_NO_RUNTIME = (
    "no numbeam runtime is running: call this inside nb.run(main) or `async with nb.Runtime()`"
)

# The process whose code is running now. Each process task runs in its own context copy.
_current: contextvars.ContextVar[Process] = contextvars.ContextVar("numbeam.process")
_set_current = _current.set
# Typed as returning a Process: where it returns None (outside a process) the caller's
# attribute access raises AttributeError, which it turns into a clear error.
_get_current: Callable[[None], Process] = _current.get  # type: ignore[assignment]
_copy_context = contextvars.copy_context
_new_pid = object.__new__
# One node per OS process: the runtime that is running, if any.
_runtime: Runtime | None = None
# Distinguishes successive runtimes in one OS process, so an old pid never names a new process.
_creations = itertools.count(1)
# Telemetry handlers by event (see _telemetry): emitters do nothing while it is empty.
_tel = _telemetry.handlers


def _is_str(reason: Any, value: str) -> bool:
    return type(reason) is str and reason == value


_no_result = type(None)  # calling it returns None, at C speed


class _NoReplyYet:
    __slots__ = ()


_NO_REPLY: Any = _NoReplyYet()  # Process.call_reply while the reply has not come
_heappush = heapq.heappush
_heappop = heapq.heappop
_INF = float("inf")
# Process.wait_timer once its deadline has passed while it was not parked (woken by a message
# that its wait did not take): its wait loop sees it and times out. (A tuple: never armed.)
_TIMED_OUT: tuple[()] = ()

# Where a process stands with respect to `receive`: parked (PENDING) or not.
_RUNNING, _PENDING, _WOKEN, _CANCELLED, _EXPIRED = 0, 1, 2, 3, 4


class Process:
    """The runtime's record of one process. Users hold its `Pid`, never this object.

    While the process is parked in `receive`, this record is also the future its task awaits:
    a minimal duck-typed asyncio future. Task.__step sees `_asyncio_future_blocking`, reads
    `_loop`, registers its wake-up with `add_done_callback`, and on wake-up calls `result()`.
    The runtime keeps that callback and runs it from its run queue instead of
    `loop.call_soon`. Being its own future saves an object per process and an indirection
    on every send.
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "_callback",
        "_context",
        "_loop",
        "aliases",
        "call_ref",
        "call_reply",
        "fn",
        "kill_reason",
        "links",
        "mailbox",
        "monitored_by",
        "monitors",
        "msgs_in",
        "msgs_out",
        "name",
        "pid",
        "result",
        "rt",
        "started",
        "state",
        "task",
        "timers",
        "trap",
        "wait_timer",
    )

    started: int  # monotonic ns at spawn; set only while telemetry handlers are attached

    def __init__(self, rt: Runtime, fn: Any) -> None:
        # The pid is built here without a call to Pid.__init__: spawn is a hot path too.
        pid = _new_pid(Pid)
        pid.node = rt.node
        pid.id = n = next(rt._ids)
        pid.creation = c = rt.creation
        pid._hash = (n * 1_000_003) ^ c  # as Pid.__init__ computes it
        pid._proc = self
        self.rt = rt
        self.pid = pid
        self.fn = fn
        self.task: asyncio.Task[Any] | None = None
        self.mailbox: deque[Any] | None = None  # allocated on the first message
        self.state = _RUNNING
        self._asyncio_future_blocking = False
        self._loop = rt._loop
        # Task's wake-up calls `result()`; a slot holding a C callable keeps that call cheap.
        self.result: Callable[[], None] = _no_result
        self.links: set[Pid] | None = None
        self.monitors: dict[Ref, Any] | None = None  # refs this process monitors -> target
        self.monitored_by: dict[Ref, Pid] | None = None  # refs watching this process -> watcher
        self.trap = False
        self.name: str | None = None
        self.kill_reason: Any = None
        self.timers: set[TimerRef] | None = None
        self.aliases: set[Ref] | None = None  # refs whose replies are still wanted (nb.call)
        # The timeout of the wait this process is parked in: None when it waits for ever (or
        # does not wait), its seconds while the runtime has not armed it yet, and once armed
        # the entry of the runtime's deadline heap (see Runtime._arm_deadlines).
        self.wait_timer: Any = None
        # While in nb.call to a local server: the call's ref, and the reply once it is here
        # (a reply goes straight here instead of through the mailbox).
        self.call_ref: Ref | None = None
        self.call_reply: Any = _NO_REPLY
        self.msgs_in = 0  # messages delivered to its mailbox, while rt.counting
        self.msgs_out = 0  # messages it sent, while rt.counting

    # -- the asyncio future protocol, used while parked in receive ---------------------------

    def add_done_callback(self, fn: Any, *, context: contextvars.Context | None = None) -> None:
        self._callback = fn
        self._context = context if context is not None else contextvars.copy_context()

    def cancel(self, msg: Any = None) -> bool:
        if self.state != _PENDING:
            return False
        self.state = _CANCELLED
        self.wait_timer = None
        self.result = self._cancelled_result
        self.rt._make_ready(self)
        return True

    def _cancelled_result(self) -> None:
        self.result = _no_result  # ready for the next wait
        raise asyncio.CancelledError

    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def done(self) -> bool:
        return self.state != _PENDING

    def _expire(self) -> None:
        if self.state == _PENDING:
            self.state = _EXPIRED
            self.rt._make_ready(self)

    def __await__(self) -> Any:
        if self.state == _PENDING:
            self._asyncio_future_blocking = True
            yield self

    # -- exit ----------------------------------------------------------------------------

    def __call__(self, task: asyncio.Task[Any]) -> None:
        """The task's done callback: work out the exit reason and run the exit."""
        if task.cancelled():
            reason = self.kill_reason if self.kill_reason is not None else "killed"
        else:
            exc = task.exception()
            if exc is None:
                reason = self.kill_reason if self.kill_reason is not None else "normal"
            elif isinstance(exc, Stop):
                reason = exc.reason
            else:
                reason = exc
                self.rt._crash_report(self, exc)
                # Reported with its full traceback; from now on the exception is only an exit
                # reason, which must not keep the dead process's locals (its tensors) alive.
                _clear_frames(exc)
        self.rt._exit(self, reason)


def _clear_frames(exc: BaseException) -> None:
    """Drop the local variables of every frame in `exc`'s traceback, and in those of the
    exceptions it was raised from, so reference counting frees them now rather than the cyclic
    garbage collector later. File names and line numbers stay: it still formats."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo.append(e.__cause__)
        todo.append(e.__context__)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _emit_spawn(proc: Process) -> None:
    """Telemetry: ("numbeam", "process", "spawn"); only called while handlers are attached."""
    proc.started = time.monotonic_ns()
    _telemetry.execute(
        _SPAWN,
        {"system_time": time.time_ns()},
        {"pid": proc.pid, "function": _fn_name(proc.fn), "name": proc.name, "node": proc.rt.node},
    )


def _emit_exit(proc: Process, reason: Any) -> None:
    """Telemetry: ("numbeam", "process", "exit"); only called while handlers are attached."""
    started = getattr(proc, "started", None)
    now = time.monotonic_ns()
    _telemetry.execute(
        _EXIT,
        {"system_time": time.time_ns(), "duration": 0 if started is None else now - started},
        {
            "pid": proc.pid,
            "function": _fn_name(proc.fn),
            "name": proc.name,
            "reason": reason,
            "node": proc.rt.node,
        },
    )


_SPAWN = ("numbeam", "process", "spawn")
_EXIT = ("numbeam", "process", "exit")


def _current_function(proc: Process) -> str | None:
    """Where the process's code is now: the innermost coroutine (or generator) it awaits,
    as ``qualname (file:line)``, leaving out this module's own (`receive`: the function that
    receives is more telling); None once its task is done. Computed on demand only."""
    task = proc.task
    if task is None or task.done():
        return None
    where = None
    if _current.get(None) is proc:  # asked by itself: it is running, here
        where = sys._getframe(1)
        while where is not None and where.f_code.co_filename == __file__:
            where = where.f_back
        coro: Any = None
    else:
        coro = task.get_coro()
    for _ in range(100):  # a chain of awaits; bounded in case of a cycle
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        if frame.f_code.co_filename != __file__ or where is None:
            where = frame
        nxt = getattr(coro, "cr_await", None)
        if nxt is None:
            nxt = getattr(coro, "gi_yieldfrom", None)
        if nxt is None or not (hasattr(nxt, "cr_frame") or hasattr(nxt, "gi_frame")):
            break
        coro = nxt
    if where is None:
        return None
    code = where.f_code
    return f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{where.f_lineno})"


def _is_async_fn(fn: Any) -> bool:
    if type(fn) is types.FunctionType:
        return bool(fn.__code__.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _check_async_fn(fn: Any, what: str) -> None:
    if not _is_async_fn(fn):
        raise TypeError(
            f"{what} needs an async function (async def), got {fn!r}; "
            "run blocking work with `await nb.offload(fn, *args)` inside an async function"
        )


def _check_timeout(timeout: Any, what: str = "timeout") -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, got {timeout!r}")
    if timeout < 0 or timeout != timeout:
        raise ValueError(f"{what} must be >= 0 seconds (or None to wait forever), got {timeout!r}")


class Runtime:
    """A node embedded in the running asyncio loop: ``async with nb.Runtime() as rt:``.

    Inside the block the enclosing task is a process too (like Erlang's shell): it has a pid
    (`rt.pid`) and a mailbox. Leaving the block stops the node: the shell process exits with
    ``"shutdown"`` (so supervisors it started with `start_link` stop their children in order;
    a block ended by ``raise nb.Stop(reason)`` or an exception exits with that reason), then
    every process still alive after `shutdown_timeout` seconds is killed, and the block returns
    once every process task has finished and every timer is cancelled. If the shell
    process itself was killed by an exit signal, the block raises ``nb.Stop(reason)``.
    """

    def __init__(self, **options: Any) -> None:
        self.options = NodeOptions.resolve(**options)
        self.node = LOCAL_NODE
        self.creation = next(_creations)
        self._budget = self.options.run_queue_budget
        self._ids = itertools.count(1)
        self._procs: dict[int, Process] = {}
        self._names: dict[str, Process] = {}
        # Live send_after timers, each to its entry in the deadline heap.
        self._timers: dict[TimerRef, tuple[Any, ...]] = {}
        # Every deadline of the node (receive and call timeouts, send_after) in one heap of
        # (when, seq, target, ...) entries, with one loop timer for the earliest. Cancelling
        # is lazy: an entry is live while its process's `wait_timer` (or `_timers[tref]`) is
        # that very entry; dead entries are dropped when they come up, or by `_compact`.
        self._deadlines: list[tuple[Any, ...]] = []
        self._deadline_seq = itertools.count()
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._deadline_at = _INF
        self._deadlines_limit = 1024  # compact the heap past this many entries
        # Processes that parked with a timeout since the last `_arm_deadlines`: a wait that
        # ends before then (most do, in a busy node) never touches the heap or the loop.
        self._unarmed: list[Process] = []
        self._ready: deque[Process] = deque()
        self._drain_scheduled = False
        # Run after each drain of the run queue: the transport sends what the processes just
        # sent to other nodes, in one batch per node, without waiting another loop iteration.
        self._after_drain: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._root: Process | None = None
        self._token: contextvars.Token[Process] | None = None
        self._exited = asyncio.Event()
        self._stopping = False
        self.dist: Distribution | None = None  # the distribution layer, when node= is given
        # Called with the pid of every process that exits (global names, process groups).
        self.exit_hooks: list[Callable[[Pid], None]] = []
        # Called with the pid and exception of every process that crashes (a CUDA worker
        # checks whether its context survived).
        self.crash_hooks: list[Callable[[Pid, BaseException], None]] = []
        # Per-node state of other layers (global names, process groups), by key.
        self.extensions: dict[str, Any] = {}
        # The devices this node drives (see numbeam.gpu), decided when it starts.
        self.devices: list[str] = []
        # Whether processes count the messages they receive and send (process_info's
        # messages_in/_out): from the start with the node option process_counters (or
        # observer), else from when an observer first looks (Runtime.count_messages).
        self.counting = self.options.process_counters or self.options.observer is not None
        # Messages received and sent by processes that have exited (the observer's totals).
        self.msgs_in_exited = 0
        self.msgs_out_exited = 0
        self.observer: Any = None  # the observer's web server (node option observer=PORT)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> Pid:
        """The pid of the shell process (the task that entered the runtime)."""
        if self._root is None:
            raise RuntimeError("the runtime is not running")
        return self._root.pid

    async def __aenter__(self) -> Runtime:
        global _runtime
        if _runtime is not None:
            raise RuntimeError(
                "a numbeam runtime is already running in this OS process (one node per process)"
            )
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("nb.Runtime must be entered from an asyncio task")
        self._loop = asyncio.get_running_loop()
        from numbeam.gpu import _devices
        from numbeam.tensors import _memory

        # Tensor memory belongs to the OS process, which is this node's alone.
        _memory.configure(
            threshold=self.options.tensor_threshold, budget=self.options.tensor_budget
        )
        self.devices = _devices.discover(self.options.devices)
        if self.options.node is not None or self.devices:
            from numbeam.transport._node import Distribution

            if self.options.node is not None:
                # A device worker is a hidden node: it meets no node it is told of.
                dist = Distribution(
                    self, hidden=self.options.hidden or _devices.current() != _devices.CPU
                )
            else:
                # A local runtime that drives devices links to its workers over a private
                # ipc:// endpoint, with a cookie nobody else has: still unreachable.
                dist = Distribution(
                    self, name=f"local{os.getpid()}@ipc://", cookie=secrets.token_urlsafe(32)
                )
            dist.start()
            self.dist = dist
            self.node = dist.name
            self.creation = dist.creation
        _devices.set_known(self.devices)
        if self.devices:
            from numbeam.gpu._workers import Workers

            workers = self.extension("gpu.workers", Workers)
            if self.options.start_workers == "eager":
                workers.start_all()
        if self.options.observer is not None:
            from numbeam.observer._web import start_observer

            try:
                self.observer = await start_observer(self)
            except BaseException:
                workers = self.extensions.get("gpu.workers")
                if workers is not None:
                    await workers.close()
                if self.dist is not None:
                    await self.dist.close()
                _devices.set_known(None)
                raise
        root = Process(self, self.__aenter__)
        root.task = task
        self._procs[root.pid.id] = root
        self._root = root
        self._token = _current.set(root)
        _runtime = self
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        global _runtime
        root = self._root
        assert root is not None and root.task is not None and self._token is not None
        killed = root.kill_reason
        if killed is not None:
            # The shell was killed by an exit signal: take back the cancellation we sent it
            # (delivering it first if the block ended before it landed).
            if exc_type is None or not issubclass(exc_type, asyncio.CancelledError):
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    pass
            root.task.uncancel()
            reason = killed
        elif isinstance(exc, Stop):
            reason = exc.reason  # `raise nb.Stop(reason)` in the block: exactly that reason
        elif isinstance(exc, Exception):
            reason = exc  # the block crashed: its links see the exception, as for any process
        else:
            reason = "shutdown"
        try:
            await self._shutdown(root, reason)
        finally:
            _current.reset(self._token)
            _runtime = None
            from numbeam.gpu import _devices

            _devices.set_known(None)
        if killed is not None:
            if isinstance(killed, BaseException):
                raise Stop(killed) from killed
            raise Stop(killed)

    async def _shutdown(self, root: Process, reason: Any) -> None:
        self._stopping = True
        if self.observer is not None:  # first: it spawns processes while it serves
            await self.observer.close()
        children = list(root.links or ())
        if self._lookup(root.pid) is root:
            self._exit(root, reason)
        deadline = self._loop.time() + self.options.shutdown_timeout
        # Children of the shell got "shutdown": the ones that trap exits (supervisors) now
        # stop their own children in order. Give them until the deadline.
        while any(p.id in self._procs for p in children):
            left = deadline - self._loop.time()
            if left <= 0:
                break
            self._exited.clear()
            try:
                await asyncio.wait_for(self._exited.wait(), left)
            except TimeoutError:
                break
        # Whatever is left is killed; a process may spawn another while it dies, so repeat.
        for _ in range(10):
            if not self._procs:
                break
            for proc in list(self._procs.values()):
                self._kill(proc, "killed")
            tasks = [p.task for p in self._procs.values() if p.task is not None]
            _, pending = await asyncio.wait(tasks, timeout=self.options.shutdown_timeout)
            await asyncio.sleep(0)  # the done callbacks of the last tasks
            if pending:
                for t in pending:
                    log.warning("process task %r ignored being killed at shutdown", t)
                break
        for proc in self._procs.values():
            proc.pid._proc = None  # tasks that ignored the kill: unreachable from now on
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        self._deadline_at = _INF
        self._deadlines.clear()
        self._unarmed.clear()
        self._timers.clear()
        self._ready.clear()
        workers = self.extensions.get("gpu.workers")
        if workers is not None:
            await workers.close()  # device workers stop once nothing of ours runs there
        offload = self.extensions.get("actors.offload")
        if offload is not None:
            offload.close()  # nb.offload's threads: jobs not started are dropped
        if self.dist is not None:
            await self.dist.close()

    def extension(self, key: str, factory: Callable[[Runtime], T]) -> T:
        """This node's state for another layer, made by ``factory(rt)`` on first use."""
        ext = self.extensions.get(key)
        if ext is None:
            ext = self.extensions[key] = factory(self)
        return ext  # type: ignore[no-any-return]

    def count_messages(self) -> None:
        """From now on, processes count the messages they receive and send."""
        self.counting = True

    def statistics(self) -> dict[str, int]:
        """Counts for debugging: processes, registered names, timers, ready queue length."""
        return {
            "processes": len(self._procs),
            "registered": len(self._names),
            "timers": len(self._timers),
            "run_queue": len(self._ready),
        }

    # -- scheduling ------------------------------------------------------------------------

    def _make_ready(self, w: Process) -> None:
        self._ready.append(w)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _hold_drain(self) -> bool:
        """Until `_release_drain`, processes woken run there, not in a drain callback of their
        own (for a caller about to wake many, then run them at once, as a node receiving a
        batch does); returns what `_release_drain` needs."""
        pending = self._drain_scheduled
        self._drain_scheduled = True
        return pending

    def _release_drain(self, pending: bool) -> None:
        """Run what was woken since `_hold_drain` returned `pending`."""
        if self._ready:
            self._drain()  # (it clears _drain_scheduled, or schedules the rest over budget)
        elif not pending:
            self._drain_scheduled = False
            if self._after_drain is not None:
                self._after_drain()

    def _drain(self) -> None:
        ready = self._ready
        pop = ready.popleft
        budget = self._budget
        try:
            while ready and budget:
                w = pop()
                budget -= 1
                w._context.run(w._callback, w)  # type: ignore[union-attr]
        finally:
            if ready:
                self._loop.call_soon(self._drain)
            else:
                self._drain_scheduled = False
            if self._after_drain is not None:
                self._after_drain()

    # -- deadlines -------------------------------------------------------------------------

    def _park_timed(self, proc: Process, timeout: float) -> None:
        """`proc` parks for at most `timeout` seconds: noted now, armed by `_arm_deadlines`
        (scheduled by the first process to park after the last one ran)."""
        proc.wait_timer = timeout
        unarmed = self._unarmed
        if not unarmed:
            self._loop.call_soon(self._arm_deadlines)
        unarmed.append(proc)

    def _arm_deadlines(self) -> None:
        """Put the deadlines of the processes still waiting since they parked in the heap.

        A deadline counts from here, at most one run-queue drain after the process parked:
        a timeout fires late by that much at worst, never early.
        """
        procs = self._unarmed[:]
        if not procs:
            return
        self._unarmed.clear()  # the next process to park schedules the next run
        now = self._loop.time()
        heap = self._deadlines
        seq = self._deadline_seq
        for p in procs:
            wt = p.wait_timer
            if wt is None or type(wt) is tuple:
                continue  # its wait ended, or is armed already
            when = now + wt
            if when == _INF:
                continue  # never fires
            entry = (when, next(seq), p)
            p.wait_timer = entry
            _heappush(heap, entry)
        self._schedule_deadlines()

    def _add_deadline(self, entry: tuple[Any, ...]) -> None:
        _heappush(self._deadlines, entry)
        self._schedule_deadlines()

    def _schedule_deadlines(self) -> None:
        """Keep one loop timer, at the earliest deadline."""
        heap = self._deadlines
        if len(heap) > self._deadlines_limit:
            self._compact()
        if not heap:
            return
        first = heap[0][0]
        if first >= self._deadline_at or first == _INF:
            return  # the loop timer comes earlier; it will look again
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
        self._deadline_at = first
        self._deadline_handle = self._loop.call_at(first, self._fire_deadlines)

    def _live(self, entry: tuple[Any, ...]) -> bool:
        target = entry[2]
        if type(target) is Process:
            return target.wait_timer is entry
        return self._timers.get(target) is entry

    def _compact(self) -> None:
        """Drop the cancelled entries from the heap (amortised: at most once per doubling)."""
        heap = self._deadlines
        heap[:] = [e for e in heap if self._live(e)]
        heapq.heapify(heap)
        self._deadlines_limit = max(1024, 2 * len(heap))

    def _fire_deadlines(self) -> None:
        self._deadline_handle = None
        self._deadline_at = _INF
        heap = self._deadlines
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            entry = _heappop(heap)
            target = entry[2]
            if type(target) is Process:
                if target.wait_timer is entry:
                    if target.state == _PENDING:
                        target.wait_timer = None
                        target._expire()
                    else:  # woken, not yet run: its wait loop will see this
                        target.wait_timer = _TIMED_OUT
            elif self._timers.get(target) is entry:
                del self._timers[target]
                try:
                    self._fire_timer(target, entry[3], entry[4])
                except Exception:
                    log.exception("send_after to %r failed", entry[3])
        self._schedule_deadlines()

    # -- processes ---------------------------------------------------------------------------

    def _spawn(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        name: str | None,
        link_to: Process | None,
        pid: Pid | None = None,
    ) -> Process:
        if name is not None:
            self._check_name_free(name)
        proc = Process(self, fn)
        if pid is None:
            pid = proc.pid
        else:  # a remote spawn: the node that asked chose the pid
            pid._proc = proc
            proc.pid = pid
        if link_to is not None:
            _add_link(proc, link_to)
        ctx = _copy_context()
        ctx.run(_set_current, proc)
        task: asyncio.Task[Any] = self._loop.create_task(fn(*args), context=ctx)  # type: ignore[arg-type]
        # The record itself is the done callback (Process.__call__): no bound method, and
        # passing the context spares the copy add_done_callback would make.
        task.add_done_callback(proc, context=ctx)
        proc.task = task
        self._procs[pid.id] = proc
        if name is not None:
            proc.name = name
            self._names[name] = proc
        if _tel:
            _emit_spawn(proc)
        return proc

    def _monitor(self, watcher: Process, target: Process) -> Ref:
        """Record a monitor of `target` by `watcher` on both sides; return its ref."""
        ref = Ref(self.node)
        if target.monitored_by is None:
            target.monitored_by = {}
        target.monitored_by[ref] = watcher.pid
        if watcher.monitors is None:
            watcher.monitors = {}
        watcher.monitors[ref] = target.pid
        return ref

    def _lookup(self, pid: Pid) -> Process | None:
        proc = self._procs.get(pid.id)
        if proc is None or (proc.pid is not pid and proc.pid != pid):
            return None
        return proc

    def _resolve(self, dest: Any) -> Process | None:
        """Resolve a destination to a live local process; NoProc for an unregistered name."""
        if type(dest) is Pid:
            return self._lookup(dest)
        if type(dest) is str:
            proc = self._names.get(dest)
            if proc is None:
                raise NoProc(f"no process is registered as {dest!r}")
            return proc
        if type(dest) is tuple and len(dest) == 2 and type(dest[0]) is str:
            name, node_name = dest
            if node_name != self.node:
                raise NoProc(f"cannot reach {name!r} on node {node_name!r}: not connected")
            return self._resolve(name)
        raise TypeError(
            "a destination must be a Pid, a registered name (str) or a (name, node) tuple, "
            f"got {dest!r}"
        )

    def _deliver(self, proc: Process, msg: Any) -> None:
        mb = proc.mailbox
        if mb is None:
            proc.mailbox = mb = deque()
        mb.append(msg)
        if self.counting:
            proc.msgs_in += 1
        if proc.state == _PENDING:
            proc.state = _WOKEN
            self._ready.append(proc)  # (_make_ready, inline: this runs for every message)
            if not self._drain_scheduled:
                self._drain_scheduled = True
                self._loop.call_soon(self._drain)

    def _reply(self, proc: Process, ref: Ref, value: Any) -> None:
        """The reply to the call `ref` arrives for `proc`: straight to it while it waits in
        `nb.call` (no mailbox, no match), through its mailbox as ``(ref, value)`` while it
        still wants it (an alias: `nb.Task`), else dropped (the caller gave up)."""
        cr = proc.call_ref
        if cr is not None and (cr is ref or cr == ref):
            proc.call_ref = None
            proc.call_reply = value
            if self.counting:
                proc.msgs_in += 1  # (a reply counts as a message, as through the mailbox)
            if proc.state == _PENDING:
                proc.state = _WOKEN
                self._ready.append(proc)
                if not self._drain_scheduled:
                    self._drain_scheduled = True
                    self._loop.call_soon(self._drain)
        elif proc.aliases and ref in proc.aliases:
            self._deliver(proc, (ref, value))

    def _kill(self, proc: Process, reason: Any) -> None:
        if proc.kill_reason is not None:
            return  # already dying; the first reason wins
        proc.kill_reason = reason
        if proc.task is not None:
            proc.task.cancel()

    def _signal(self, target: Process, sender: Pid, reason: Any) -> None:
        """An exit signal from `sender` arrives at `target` (links, and `nb.exit`)."""
        if target.trap:
            self._deliver(target, Exit(sender, reason))
        elif not _is_str(reason, "normal"):
            self._kill(target, reason)

    def _exit(self, proc: Process, reason: Any) -> None:
        if _tel:
            _emit_exit(proc, reason)
        self.msgs_in_exited += proc.msgs_in
        self.msgs_out_exited += proc.msgs_out
        pid = proc.pid
        pid._proc = None
        if self._procs.get(pid.id) is proc:
            del self._procs[pid.id]
        if proc.name is not None and self._names.get(proc.name) is proc:
            del self._names[proc.name]
        if proc.timers:
            for tref in proc.timers:
                self._timers.pop(tref, None)  # its heap entry is dead from now on
        proc.wait_timer = None
        if self.exit_hooks:  # global names and groups: freed before anyone hears of the exit
            for hook in self.exit_hooks:
                hook(pid)
        dist = self.dist
        links, proc.links = proc.links, None
        if links:
            for other in links:
                target = self._lookup(other)
                if target is not None:
                    if target.links is not None:
                        target.links.discard(pid)
                    self._signal(target, pid, reason)
                elif dist is not None and other.node != self.node:
                    dist.exit_signal(pid, other, reason, True)
        watchers, proc.monitored_by = proc.monitored_by, None
        if watchers:
            for ref, watcher in watchers.items():
                w = self._lookup(watcher)
                if w is not None:
                    if w.monitors is not None:
                        w.monitors.pop(ref, None)
                    self._deliver(w, Down(ref, pid, reason))
                elif dist is not None and watcher.node != self.node:
                    dist.down(watcher, ref, pid, reason)
        held, proc.monitors = proc.monitors, None
        if held:
            for ref, target_pid in held.items():
                if type(target_pid) is Pid and target_pid.node == self.node:
                    t = self._lookup(target_pid)
                    if t is not None and t.monitored_by is not None:
                        t.monitored_by.pop(ref, None)
                elif dist is not None:
                    dist.demonitor(ref, target_pid)
        proc.mailbox = None
        if self._stopping:
            self._exited.set()

    def _crash_report(self, proc: Process, exc: BaseException) -> None:
        fn = getattr(proc.fn, "__qualname__", repr(proc.fn))
        log.error(
            "process %r (%s%s) crashed: %r",
            proc.pid,
            fn,
            f", registered as {proc.name!r}" if proc.name else "",
            exc,
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"numbeam_pid": proc.pid, "numbeam_name": proc.name, "numbeam_reason": exc},
        )
        for hook in self.crash_hooks:
            hook(proc.pid, exc)

    # -- names and timers --------------------------------------------------------------------

    def _check_name_free(self, name: Any) -> None:
        if type(name) is not str or not name:
            raise TypeError(f"a registered name must be a non-empty str, got {name!r}")
        if name in self._names:
            raise ValueError(
                f"the name {name!r} is already registered to {self._names[name].pid!r}"
            )

    def _fire_timer(self, tref: TimerRef, dest: Any, msg: Any) -> None:
        if type(dest) is Pid and self.dist is not None and dest.node != self.node:
            try:
                self.dist.send(dest, msg)
            except Exception:
                log.exception("send_after to %r: the message could not be sent", dest)
            return
        if type(dest) is Pid:
            proc = self._lookup(dest)
            if proc is not None and proc.timers is not None:
                proc.timers.discard(tref)
        else:
            proc = self._names.get(dest)
        if proc is not None:
            self._deliver(proc, msg)


# ---- the public functions ---------------------------------------------------------------------


def _rt() -> Runtime:
    rt = _runtime
    if rt is None:
        raise RuntimeError(_NO_RUNTIME)
    return rt


def _me(what: str) -> Process:
    proc = _current.get(None)
    if proc is None or proc.rt is not _runtime:
        if _runtime is None:
            raise RuntimeError(f"{what}: {_NO_RUNTIME}")
        raise RuntimeError(
            f"{what} must be called from inside a process (spawned with nb.spawn, or the task "
            "that entered nb.Runtime)"
        )
    return proc


def self() -> Pid:
    """Return the pid of the calling process."""
    return _me("nb.self()").pid


def node() -> str:
    """Return this node's name (``"nonode@nohost"`` for a local runtime)."""
    return _rt().node


def spawn(
    fn: Callable[..., Coroutine[Any, Any, Any]] | str,
    *args: Any,
    name: str | None = None,
    node: str | None = None,
    device: str | None = None,
) -> Pid:
    """Start ``fn(*args)`` (an async function) as a new process and return its pid.

    Args:
        fn: the async function the process runs; its return ends the process with "normal".
        *args: its arguments, passed by reference (treat messages and arguments as immutable).
        name: register the new process under this name, atomically.
        node: start it on that node instead (remote spawn). The pid comes back at once; `fn`
            (a module-level function, or a ``"package.module:function"`` string) is imported
            there by module path, and if that fails the new process exits with the error as its
            reason. Arguments must be able to cross (TypeError here if not).
        device: start it on that device's worker node (``"cuda:0"``, ``"fake:1"``), as a
            remote spawn; ``"cpu"`` is this node. The pid comes back at once, also while the
            worker is starting or restarting: the process runs once the worker is up.
            ValueError names the devices there are if this node has no such device.
    """
    rt = _runtime
    if rt is None:
        raise RuntimeError(_NO_RUNTIME)
    if device is not None:
        node = _device_node(rt, device, node)
    if node is not None and node != rt.node:
        return _remote_spawn(rt, fn, args, name, node, None, None)[0]
    if type(fn) is not types.FunctionType or not fn.__code__.co_flags & inspect.CO_COROUTINE:
        _check_async_fn(fn, "nb.spawn()")
    return rt._spawn(fn, args, name, None).pid  # type: ignore[arg-type]


def spawn_link(
    fn: Callable[..., Coroutine[Any, Any, Any]] | str,
    *args: Any,
    name: str | None = None,
    node: str | None = None,
    device: str | None = None,
) -> Pid:
    """Spawn ``fn(*args)`` and link it to the calling process, atomically (see `spawn`)."""
    me = _me("nb.spawn_link()")
    if device is not None:
        node = _device_node(me.rt, device, node)
    if node is not None and node != me.rt.node:
        return _remote_spawn(me.rt, fn, args, name, node, me, None)[0]
    _check_async_fn(fn, "nb.spawn_link()")
    return me.rt._spawn(fn, args, name, me).pid  # type: ignore[arg-type]


def spawn_monitor(
    fn: Callable[..., Coroutine[Any, Any, Any]] | str,
    *args: Any,
    node: str | None = None,
    device: str | None = None,
) -> tuple[Pid, Ref]:
    """Spawn ``fn(*args)`` and monitor it from the calling process, atomically (see `spawn`)."""
    me = _me("nb.spawn_monitor()")
    if device is not None:
        node = _device_node(me.rt, device, node)
    if node is not None and node != me.rt.node:
        pid, ref = _remote_spawn(me.rt, fn, args, None, node, None, me)
        assert ref is not None
        return pid, ref
    _check_async_fn(fn, "nb.spawn_monitor()")
    proc = me.rt._spawn(fn, args, None, None)  # type: ignore[arg-type]
    return proc.pid, me.rt._monitor(me, proc)


def _device_node(rt: Runtime, device: Any, node: str | None) -> str | None:
    """The node a process pinned to `device` starts on: its worker's, or None for this one
    (``"cpu"``, or the device of the worker this code runs in)."""
    from numbeam.gpu import _devices

    kind, _ = _devices.parse_device(device)
    if node is not None and node != rt.node:
        raise ValueError(
            f"give node= or device=, not both: device {device!r} means this node's worker"
        )
    if kind == _devices.CPU or device == _devices.current():
        return None
    workers = rt.extensions.get("gpu.workers")
    if workers is None or device not in workers.workers:
        there = ", ".join(["cpu", *rt.devices])
        if _devices.current() != _devices.CPU:
            raise ValueError(
                f"unknown device {device!r}: this is the worker of {_devices.current()}, which "
                f"spawns on its own device only (the node that drives the devices spawns on "
                f"the others)"
            )
        raise ValueError(f"unknown device {device!r}; this node has: {there}")
    return workers.node_for(device)  # type: ignore[no-any-return]


def devices() -> list[str]:
    """This node's devices, in order (``[]`` when it has none); see the node option
    ``devices``. In a device worker: the devices of the node that drives it."""
    from numbeam.gpu import _devices

    rt = _rt()
    if _devices.current() != _devices.CPU:
        return _devices.known()
    return list(rt.devices)


def device() -> str:
    """The device the calling code runs on: its worker's device (``"cuda:1"``) inside a
    process spawned with ``device=``, ``"cpu"`` elsewhere."""
    from numbeam.gpu import _devices

    return _devices.current()


def _remote_spawn(
    rt: Runtime,
    fn: Any,
    args: tuple[Any, ...],
    name: str | None,
    node: str,
    link_to: Process | None,
    monitor_by: Process | None,
) -> tuple[Pid, Ref | None]:
    if rt.dist is None:
        raise RuntimeError(
            f"cannot spawn on node {node!r}: this runtime is local; start it with node=..."
        )
    if not isinstance(fn, str):
        _check_async_fn(fn, "remote spawn")
    return rt.dist.spawn(fn, args, node, name, link_to, monitor_by)


def _remote(rt: Runtime, dest: Any) -> bool:
    """True if `dest` (a Pid, or a ``(name, node)`` pair) is on another node and this runtime
    is distributed."""
    if rt.dist is None:
        return False
    if type(dest) is Pid:
        return dest.node != rt.node
    return type(dest) is tuple and len(dest) == 2 and type(dest[1]) is str and dest[1] != rt.node


def send(dest: Dest, msg: Any) -> None:
    """Send `msg` to `dest`: a Pid, a registered name, or ``(name, node)``.

    Sending to a dead pid drops the message silently, as in Erlang; an unregistered name raises
    `nb.NoProc`. Within a node the message is passed by reference: treat it as immutable.
    """
    # The hot path: the pid spawn made caches its live process (cleared when it exits, and
    # for every process when the runtime stops), so no table lookup and no runtime check.
    proc = dest._proc if type(dest) is Pid else None
    if proc is None:
        rt = _runtime
        if rt is not None and rt.dist is not None:
            if type(dest) is Pid and dest.node != rt.node:
                if rt.counting:
                    _count_out()
                rt.dist.send(dest, msg)  # the hot path of a remote send
                return
            if (
                type(dest) is tuple
                and len(dest) == 2
                and type(dest[0]) is str
                and type(dest[1]) is str
                and dest[1] != rt.node
            ):
                if rt.counting:
                    _count_out()
                rt.dist.send_name(dest[0], dest[1], msg)  # (name, node): as fast as a pid
                return
        proc = _resolve_for_send(dest, msg)
        if proc is None:
            return
    mb = proc.mailbox
    if mb is None:
        proc.mailbox = mb = deque()
    mb.append(msg)
    rt = proc.rt
    if rt.counting:  # (per-process counters: only while the node counts)
        proc.msgs_in += 1
        _count_out()
    if proc.state == _PENDING:
        proc.state = _WOKEN
        rt._ready.append(proc)
        if not rt._drain_scheduled:
            rt._drain_scheduled = True
            rt._loop.call_soon(rt._drain)


def _count_out() -> None:
    sender = _get_current(None)
    if sender is not None:
        sender.msgs_out += 1


def _resolve_for_send(dest: Any, msg: Any) -> Process | None:
    rt = _runtime
    if rt is None:
        raise RuntimeError(_NO_RUNTIME)
    if type(dest) is Pid:
        if dest.node != rt.node:
            if rt.dist is not None:
                rt.dist.send(dest, msg)
            return None  # a pid of another node, and this runtime is local: nobody there
        return rt._lookup(dest)  # an equal Pid object that is not the one spawn made
    if type(dest) is tuple and len(dest) == 2 and type(dest[1]) is str and dest[1] != rt.node:
        if type(dest[0]) is not str:
            raise TypeError(f"a (name, node) destination needs a str name, got {dest!r}")
        if rt.dist is None:
            raise NoProc(f"cannot reach {dest[0]!r} on node {dest[1]!r}: this node is local")
        rt.dist.send_name(dest[0], dest[1], msg)  # like Erlang, no error for a missing name
        return None
    return rt._resolve(dest)


def _matcher(match: Match) -> Callable[[Any], bool]:
    if isinstance(match, type):
        return lambda m: isinstance(m, match)
    if isinstance(match, tuple) and match and all(isinstance(t, type) for t in match):
        return lambda m: isinstance(m, match)
    if callable(match):
        return match
    raise TypeError(
        f"receive(match=...) takes None, a type, a tuple of types or a predicate, got {match!r}"
    )


@types.coroutine
def receive(match: Match = None, timeout: float | None = None) -> Generator[Any, None, Any]:
    """Return the next message in the calling process's mailbox, waiting for one if needed.

    Use it as ``msg = await nb.receive(...)``.

    Args:
        match: None for the oldest message; a type or tuple of types for the oldest message of
            that type; or a predicate. Messages that do not match stay in the mailbox, in order
            (selective receive).
        timeout: seconds to wait, None for ever, 0 to only look at what is already there.

    Raises:
        TimeoutError: nothing matching arrived within `timeout`.

    Cancellation-safe: a receive that is cancelled (the process is killed, or an enclosing
    ``asyncio.timeout`` fires) raises with the mailbox unchanged; it never eats a message.
    Only the process's own task may receive from its mailbox.
    """
    # A generator-based coroutine rather than `async def`: the wait yields the process record
    # straight to the Task, one frame instead of two on the hottest path of the runtime.
    proc = _get_current(None)
    if match is None and timeout is None:  # the hot path
        try:
            mb = proc.mailbox
        except AttributeError:
            _me("nb.receive()")  # not in a process: raises a clear error
            raise
        if mb:
            return mb.popleft()
        if proc.state == _PENDING:
            _concurrent_receive(proc)
        proc.state = _PENDING
        proc._asyncio_future_blocking = True
        yield proc
        return proc.mailbox.popleft()  # type: ignore[union-attr]
    if match is None and (type(timeout) is int or type(timeout) is float) and timeout > 0:
        # The next hot path: a message that is there is taken without a timer; a process
        # that parks notes its timeout, which the runtime arms only if it is still waiting
        # once the run queue is drained (Runtime._arm_deadlines).
        try:
            mb = proc.mailbox
        except AttributeError:
            _me("nb.receive()")
            raise
        if mb:
            return mb.popleft()
        if proc.state == _PENDING:
            _concurrent_receive(proc)
        proc.state = _PENDING
        proc.wait_timer = timeout  # (Runtime._park_timed, inline)
        unarmed = proc.rt._unarmed
        if not unarmed:
            proc.rt._loop.call_soon(proc.rt._arm_deadlines)
        unarmed.append(proc)
        proc._asyncio_future_blocking = True
        yield proc
        proc.wait_timer = None
        mb = proc.mailbox
        if mb:
            return mb.popleft()
        raise TimeoutError(f"receive: no message within {timeout} s")
    if proc is None:
        _me("nb.receive()")
    return (yield from _receive_slow(proc, match, timeout))


@types.coroutine
def _await_reply(proc: Process, ref: Ref, timeout: float | None) -> Generator[Any, None, Any]:
    """Park the caller of `nb.call` until `Runtime._reply` puts the answer to `ref` in
    ``proc.call_reply``, or a ``Down`` for `ref` reaches its mailbox (returned as
    ``(_NO_REPLY, down)``). Other messages stay where they are. TimeoutError on expiry.
    The caller set ``proc.call_ref = ref`` before sending its request."""
    mb = proc.mailbox
    start = len(mb) if mb else 0  # what was there before cannot be this call's Down
    if timeout is not None:
        proc.wait_timer = timeout  # (Runtime._park_timed, inline)
        unarmed = proc.rt._unarmed
        if not unarmed:
            proc.rt._loop.call_soon(proc.rt._arm_deadlines)
        unarmed.append(proc)
    try:
        while True:
            value = proc.call_reply
            if value is not _NO_REPLY:
                return value
            proc.state = _PENDING
            proc._asyncio_future_blocking = True
            yield proc
            value = proc.call_reply
            if value is not _NO_REPLY:
                return value
            expired = proc.state == _EXPIRED or proc.wait_timer is _TIMED_OUT
            mb = proc.mailbox
            if mb:
                n = len(mb)
                for i in range(start, n):
                    m = mb[i]
                    if type(m) is Down and m.ref == ref:
                        del mb[i]
                        return (_NO_REPLY, m)
                start = n
            if expired:
                raise TimeoutError
    finally:
        if proc.state == _PENDING:  # (closed while parked: it is not parked any more)
            proc.state = _RUNNING
        proc.wait_timer = None
        proc.call_ref = None
        proc.call_reply = _NO_REPLY


def _concurrent_receive(proc: Process) -> None:
    raise RuntimeError(
        f"two tasks are receiving for process {proc.pid!r} at once; only the process's own "
        "task may call nb.receive()"
    )


async def _receive_slow(proc: Process, match: Match, timeout: float | None) -> Any:
    _check_timeout(timeout)
    pred = None if match is None else _matcher(match)
    start = 0
    mb = proc.mailbox
    if mb:
        if pred is None:
            return mb.popleft()
        for i, m in enumerate(mb):
            if pred(m):
                del mb[i]
                return m
        start = len(mb)
    if timeout == 0:
        raise TimeoutError("receive(timeout=0): no matching message in the mailbox")
    if proc.state == _PENDING:
        _concurrent_receive(proc)
    if timeout is not None:
        proc.rt._park_timed(proc, timeout)
    try:
        while True:
            proc.state = _PENDING
            await proc
            expired = proc.state == _EXPIRED or proc.wait_timer is _TIMED_OUT
            mb = proc.mailbox
            if mb:
                n = len(mb)
                if pred is None:
                    return mb.popleft()
                for i in range(start, n):
                    m = mb[i]
                    if pred(m):
                        del mb[i]
                        return m
                start = n
            if expired:
                raise TimeoutError(f"receive: no matching message within {timeout} s")
    finally:
        proc.state = _RUNNING
        proc.wait_timer = None


def link(pid: Pid) -> None:
    """Link the calling process and `pid` (bidirectional).

    Linking to a dead process sends the caller an exit signal ``"noproc"``: a trapping caller
    gets ``Exit(pid, "noproc")``, any other caller gets `nb.NoProc` raised here.
    """
    me = _me("nb.link()")
    if type(pid) is not Pid:
        raise TypeError(f"nb.link() takes a Pid, got {pid!r}")
    if pid == me.pid:
        return
    if _remote(me.rt, pid):
        me.rt.dist.link(me, pid)  # type: ignore[union-attr]
        return
    target = me.rt._lookup(pid)
    if target is None:
        if me.trap:
            me.rt._deliver(me, Exit(pid, "noproc"))
            return
        raise NoProc(f"cannot link to {pid!r}: no such process")
    _add_link(me, target)


def _add_link(a: Process, b: Process) -> None:
    if a.links is None:
        a.links = set()
    a.links.add(b.pid)
    if b.links is None:
        b.links = set()
    b.links.add(a.pid)


def unlink(pid: Pid) -> None:
    """Remove the link between the calling process and `pid`, if any."""
    me = _me("nb.unlink()")
    if type(pid) is not Pid:
        raise TypeError(f"nb.unlink() takes a Pid, got {pid!r}")
    if me.links:
        me.links.discard(pid)
    if _remote(me.rt, pid):
        me.rt.dist.unlink(me.pid, pid)  # type: ignore[union-attr]
        return
    target = me.rt._lookup(pid)
    if target is not None and target.links:
        target.links.discard(me.pid)


def monitor(target: Pid | str | tuple[str, str]) -> Ref:
    """Monitor `target` (a pid, a registered name, or ``(name, node)``) from the caller.

    When it exits the caller gets ``nb.Down(ref, pid, reason)``; if it is already gone, the
    ``Down`` with reason ``"noproc"`` arrives at once (from a remote node: as soon as it
    answers). A lost connection to its node gives ``Down(ref, target, "noconnection")``.
    """
    me = _me("nb.monitor()")
    rt = me.rt
    if type(target) is tuple and len(target) == 2 and type(target[0]) is str:
        if target[1] == rt.node:
            target = target[0]
        elif rt.dist is not None and type(target[1]) is str:
            return rt.dist.monitor(me, target)
        else:
            raise NoProc(f"cannot monitor {target!r}: this runtime is local")
    if type(target) is Pid:
        if _remote(rt, target):
            return rt.dist.monitor(me, target)  # type: ignore[union-attr]
        proc = rt._lookup(target)
    elif type(target) is str:
        proc = rt._names.get(target)
    else:
        raise TypeError(f"nb.monitor() takes a Pid or a registered name, got {target!r}")
    if proc is None:
        ref = Ref(rt.node)
        rt._deliver(me, Down(ref, target, "noproc"))  # type: ignore[arg-type]
        return ref
    return rt._monitor(me, proc)


def demonitor(ref: Ref, flush: bool = False) -> bool:
    """Stop the monitor `ref`; with ``flush=True`` also drop its ``Down`` from the mailbox.

    Returns True if the monitor was active, False if it had fired or was never there.
    """
    me = _me("nb.demonitor()")
    if not isinstance(ref, Ref):
        raise TypeError(f"nb.demonitor() takes the Ref that nb.monitor() returned, got {ref!r}")
    target_pid = me.monitors.pop(ref, None) if me.monitors else None
    if type(target_pid) is Pid and target_pid.node == me.rt.node:
        target = me.rt._lookup(target_pid)
        if target is not None and target.monitored_by:
            target.monitored_by.pop(ref, None)
    elif target_pid is not None and me.rt.dist is not None:
        me.rt.dist.demonitor(ref, target_pid)
    if flush and me.mailbox:
        _flush(me, lambda m: type(m) is Down and m.ref == ref)
    return target_pid is not None


def _flush(proc: Process, pred: Callable[[Any], bool]) -> None:
    mb = proc.mailbox
    if mb and any(pred(m) for m in mb):
        proc.mailbox = deque(m for m in mb if not pred(m))


def exit(pid: Pid, reason: Any) -> None:
    """Send an exit signal with `reason` to `pid`.

    ``"kill"`` cannot be trapped: the target dies with ``"killed"``. ``"normal"`` is ignored by
    a target that does not trap exits. A trapping target gets ``nb.Exit(sender, reason)``.
    Sent to the caller itself (not trapping) it ends the caller at once, like ``raise Stop``.
    """
    me = _me("nb.exit()")
    if type(pid) is not Pid:
        raise TypeError(f"nb.exit() takes a Pid, got {pid!r}")
    rt = me.rt
    kill = _is_str(reason, "kill")
    if pid == me.pid:
        if kill:
            raise Stop("killed")
        if me.trap:
            rt._deliver(me, Exit(me.pid, reason))
            return
        raise Stop(reason)
    if _remote(rt, pid):
        rt.dist.exit_signal(me.pid, pid, reason, False)  # type: ignore[union-attr]
        return
    target = rt._lookup(pid)
    if target is None:
        return
    if kill:
        rt._kill(target, "killed")
    else:
        rt._signal(target, me.pid, reason)


def trap_exit(flag: bool) -> bool:
    """Make the calling process trap exit signals (or stop); returns the previous setting."""
    me = _me("nb.trap_exit()")
    if not isinstance(flag, bool):
        raise TypeError(f"nb.trap_exit() takes a bool, got {flag!r}")
    old, me.trap = me.trap, flag
    return old


def is_alive(pid: Pid) -> bool:
    """True while the process `pid` of this node has not exited.

    Like Erlang's is_process_alive/1 it only answers for this node's pids (ValueError for a
    remote one): monitor a remote process to learn when it exits.
    """
    if type(pid) is not Pid:
        raise TypeError(f"nb.is_alive() takes a Pid, got {pid!r}")
    rt = _rt()
    if _remote(rt, pid):
        raise ValueError(f"nb.is_alive() takes a pid of this node; {pid!r} is remote (monitor it)")
    return rt._lookup(pid) is not None


def processes() -> list[Pid]:
    """The pids of all live processes of this node."""
    return [p.pid for p in _rt()._procs.values()]


def process_info(pid: Pid) -> dict[str, Any] | None:
    """A snapshot of a live process, or None if it is gone.

    Keys: ``status`` ("running", "waiting", "runnable" or "exiting"), ``message_queue_len``,
    ``links``, ``monitors`` (pids this process monitors), ``monitored_by``,
    ``registered_name``, ``trap_exit``, ``function`` (what it was started with),
    ``current_function`` (where its code is now: ``qualname (file:line)``),
    ``messages_in`` and ``messages_out`` (messages delivered to it and sent by it: counted
    while the node counts, see the node option ``process_counters``; None when it does not).
    """
    if type(pid) is not Pid:
        raise TypeError(f"nb.process_info() takes a Pid, got {pid!r}")
    rt = _rt()
    if _remote(rt, pid):
        raise ValueError(f"nb.process_info() takes a pid of this node; {pid!r} is remote")
    proc = rt._lookup(pid)
    if proc is None:
        return None
    if proc.kill_reason is not None:
        status = "exiting"
    elif _current.get(None) is proc:
        status = "running"
    elif proc.state == _PENDING:
        status = "waiting"
    else:
        status = "runnable"
    return {
        "status": status,
        "message_queue_len": len(proc.mailbox) if proc.mailbox else 0,
        "links": sorted(proc.links or (), key=lambda p: p.id),
        "monitors": list((proc.monitors or {}).values()),
        "monitored_by": list((proc.monitored_by or {}).values()),
        "registered_name": proc.name,
        "trap_exit": proc.trap,
        "function": getattr(proc.fn, "__qualname__", repr(proc.fn)),
        "current_function": _current_function(proc),
        "messages_in": proc.msgs_in if rt.counting else None,
        "messages_out": proc.msgs_out if rt.counting else None,
    }


def register(name: str, pid: Pid) -> None:
    """Register `pid` under `name` on this node; the name is freed when the process exits.

    Raises:
        TypeError: `name` is not a non-empty str, or `pid` is not a Pid.
        ValueError: the name is taken, the process already has a name, or it is not alive.
    """
    rt = _rt()
    if type(pid) is not Pid:
        raise TypeError(f"nb.register() takes a Pid to register, got {pid!r}")
    rt._check_name_free(name)
    proc = rt._lookup(pid)
    if proc is None:
        raise ValueError(f"cannot register {name!r}: {pid!r} is not a live process of this node")
    if proc.name is not None:
        raise ValueError(f"{pid!r} is already registered as {proc.name!r}")
    proc.name = name
    rt._names[name] = proc


def unregister(name: str) -> None:
    """Remove the registered name `name`; ValueError if it is not registered."""
    rt = _rt()
    proc = rt._names.pop(name, None)
    if proc is None:
        raise ValueError(f"{name!r} is not registered")
    proc.name = None


def whereis(name: str) -> Pid | None:
    """The pid registered as `name`, or None."""
    proc = _rt()._names.get(name)
    return None if proc is None else proc.pid


def registered() -> list[str]:
    """All names registered on this node."""
    return list(_rt()._names)


def send_after(delay: float, dest: Pid | str, msg: Any) -> TimerRef:
    """Send `msg` to `dest` after `delay` seconds; returns a ref for `cancel_timer`.

    A timer to a pid is cancelled when that process exits; a timer to a name looks the name up
    when it fires and does nothing if it is not registered then.
    """
    rt = _rt()
    _check_timeout(delay, "send_after delay")
    if delay is None:
        raise TypeError("send_after delay must be a number of seconds, got None")
    if type(dest) is not Pid and type(dest) is not str:
        raise TypeError(f"send_after takes a Pid or a registered name, got {dest!r}")
    tref = TimerRef(rt.node)
    if type(dest) is Pid and not _remote(rt, dest):
        proc = rt._lookup(dest)
        if proc is None:
            return tref  # the destination is dead: the timer is already void
        if proc.timers is None:
            proc.timers = set()
        proc.timers.add(tref)
    entry = (rt._loop.time() + delay, next(rt._deadline_seq), tref, dest, msg)
    rt._timers[tref] = entry
    rt._add_deadline(entry)
    return tref


def cancel_timer(tref: TimerRef) -> float | bool:
    """Cancel a timer; returns the seconds it had left, or False if it had fired or was gone."""
    rt = _rt()
    if not isinstance(tref, TimerRef):
        raise TypeError(f"nb.cancel_timer() takes the TimerRef send_after returned, got {tref!r}")
    entry = rt._timers.pop(tref, None)  # its heap entry is dead from now on
    if entry is None:
        return False
    return max(0.0, entry[0] - rt._loop.time())


def run(main: Callable[..., Coroutine[Any, Any, T]], *args: Any, **options: Any) -> T:
    """Start a node, run ``main(*args)`` as its first process, stop the node, return the result.

    Blocking: the entry point of a program. Uses uvloop when it is installed (node option
    ``uvloop``). If `main` raises, `run` raises the same exception after shutting down.
    """
    _check_async_fn(main, "nb.run()")
    opts = NodeOptions.resolve(**options)
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(
            "nb.run() blocks, so it cannot be called from a running event loop; "
            "inside async code use `async with nb.Runtime():` instead"
        )

    async def _main() -> T:
        async with Runtime(**options):
            return await main(*args)

    loop_factory = None
    if opts.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(_main())
    return result
