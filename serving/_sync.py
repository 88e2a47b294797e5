"""Running a plain (blocking) `predict` off the event loop, with BLAS/OpenMP threads limited.

A batched numpy model served from a thread while OpenBLAS keeps its default of one thread per
core competes with the node's own event loop for every core: on 2 cores that made one batch 8x
slower. So a plain `predict` runs on the node's offload pool (`nb.offload`): a bounded pool
sized from the CPU count, with the native thread pools limited by threadpoolctl while the node
runs (node options ``offload_threads`` and ``offload_blas_threads``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numbeam.actors import offload

__all__ = ["run_sync"]


async def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on the node's offload pool (``nb.offload``)."""
    return await offload(fn, *args)
