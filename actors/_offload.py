"""`nb.offload`: blocking numeric work on the node's own bounded thread pool.

A process that calls numpy (or any blocking code) directly stops the scheduler. Handing it to
``asyncio.to_thread`` keeps the loop running, but the default executor has up to
``cpu_count + 4`` threads and each BLAS call in them starts OpenBLAS's (or MKL's, or an OpenMP
runtime's) own thread pool, one thread per CPU: on a 2-core box a handful of concurrent
requests run dozens of threads that fight for two cores, and latency goes up tenfold.

The node's offload pool is sized from the CPU count (node option ``offload_threads``) and, while
the node runs, limits the BLAS and OpenMP thread pools with threadpoolctl (node option
``offload_blas_threads``) so that offload threads times BLAS threads stays within the CPUs.
OpenBLAS keeps one process-wide pool, so its limit is set once, from the event loop's thread,
when the pool starts (threadpoolctl's rule: BLAS limits from one controlling thread), and
restored when the node stops; OpenMP's limit is per thread, so each offload thread sets its own.
Libraries loaded after the first `offload` are not limited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["offload"]

T = TypeVar("T")

log = logging.getLogger("numbeam")

_KEY = "actors.offload"


def cpu_count() -> int:
    """The CPUs this OS process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def sizes(threads: int | None, blas_threads: int | None) -> tuple[int, int]:
    """The pool's threads and each thread's BLAS threads, defaults filled in from the CPUs:
    one offload thread per CPU, and BLAS threads so that their product is the CPU count."""
    cpus = cpu_count()
    n = cpus if threads is None else threads
    blas = max(1, cpus // n) if blas_threads is None else blas_threads
    return n, blas


def _limit_worker(blas_threads: int) -> None:
    """Each offload thread: OpenMP's limit is per thread (set before its first parallel
    region)."""
    from threadpoolctl import threadpool_limits

    try:
        threadpool_limits(limits=blas_threads, user_api="openmp")
    except Exception:
        log.warning("nb.offload: could not limit the OpenMP threads", exc_info=True)


class Offload:
    """A node's offload pool (``rt.extension(_KEY, Offload)``): made on the first `offload`,
    closed with the node."""

    def __init__(self, rt: Runtime) -> None:
        from threadpoolctl import threadpool_limits

        self.threads, self.blas_threads = sizes(
            rt.options.offload_threads, rt.options.offload_blas_threads
        )
        # From the loop's thread, once: OpenBLAS's pool is process-wide.
        self._limits: Any = None
        try:
            self._limits = threadpool_limits(limits=self.blas_threads, user_api="blas")
        except Exception:  # an exotic library threadpoolctl cannot drive: run unlimited
            log.warning("nb.offload: could not limit the BLAS threads", exc_info=True)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads,
            thread_name_prefix="numbeam-offload",
            initializer=_limit_worker,
            initargs=(self.blas_threads,),
        )
        self.closed = False

    def close(self) -> None:
        """Stop taking work; jobs not started are cancelled, running ones finish in their
        threads (a thread cannot be stopped), and the BLAS limits are put back."""
        if self.closed:
            return
        self.closed = True
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._limits is not None:
            self._limits.restore_original_limits()


async def offload(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run the blocking ``fn(*args, **kwargs)`` on this node's offload thread pool and return
    its result (or raise its exception), while the event loop goes on scheduling processes.

    The pool has ``offload_threads`` threads (node option; default: one per CPU), and BLAS /
    OpenMP libraries use at most ``offload_blas_threads`` threads each while the node runs
    (default: CPUs // offload_threads, at least 1), so concurrent numeric jobs do not
    oversubscribe the machine. Jobs past the pool's size wait for a free thread, in order.

    `fn` runs in another thread: it must not call numbeam's functions (send its result back
    from the process that awaited `offload` instead). If the awaiting process is killed or
    its wait is cancelled, a job not yet started is dropped and a running one finishes, its
    result discarded.

    Raises:
        TypeError: `fn` is not callable, or is an async function (await it directly).
        RuntimeError: no numbeam runtime is running, or it is stopping.
    """
    from . import _runtime

    if not callable(fn):
        raise TypeError(f"nb.offload() takes a blocking function to run, got {fn!r}")
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):
        raise TypeError(
            f"nb.offload() runs blocking functions in a thread; {fn!r} is an async function: "
            "await it directly"
        )
    rt = _runtime._rt()
    pool = rt.extension(_KEY, Offload)
    if pool.closed:
        raise RuntimeError("nb.offload(): the runtime is stopping")
    future = pool.executor.submit(fn, *args, **kwargs)
    return await asyncio.wrap_future(future, loop=rt._loop)
