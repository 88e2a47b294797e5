"""Running a plain (blocking) `predict` off the event loop, with BLAS/OpenMP threads limited.

A batched numpy model served from a thread while OpenBLAS keeps its default of one thread per
core competes with the node's own event loop for every core: on 2 cores that made one batch 8x
slower. So while any predict runs in a thread, threadpoolctl holds the native thread pools at
one thread (per predict thread: `partitions` of them run side by side), and restores them when
the last one returns. The limit is process-wide (native pools have no per-thread setting), so
it is reference-counted across concurrent predicts instead of set and reset by each.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from threadpoolctl import ThreadpoolController

__all__ = ["run_sync"]

_lock = threading.Lock()
_active = 0
_controller: ThreadpoolController | None = None
_limiter: Any = None


def _limited(fn: Callable[..., Any], *args: Any) -> Any:
    global _active, _controller, _limiter
    with _lock:
        if _active == 0:
            if _controller is None:
                _controller = ThreadpoolController()  # finds the loaded libraries (~1 ms)
            _limiter = _controller.limit(limits=1)
        _active += 1
    try:
        return fn(*args)
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


async def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread, with native thread pools at one thread meanwhile."""
    # TODO(merge): nb.offload — once the hot-paths branch lands, this line becomes
    # `return await nb.offload(fn, *args)` (its bounded executor applies the same limits).
    return await asyncio.to_thread(_limited, fn, *args)
