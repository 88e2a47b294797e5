"""What the ``numbeam`` commands share (`numbeam.__main__`, `numbeam.observer`'s commands)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import numbeam as nb

__all__ = ["connect_within", "until_signalled"]


async def until_signalled(ready: Callable[[], None] | None = None) -> None:
    """Call `ready` (once SIGINT and SIGTERM are caught), then wait for one of them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # no loop signal handlers (Windows): Ctrl-C still stops it
            continue
        installed.append(sig)
    try:
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def connect_within(name: str, timeout: float) -> bool:
    """`nb.connect(name)`, False if it has not answered within `timeout` seconds."""
    try:
        return await asyncio.wait_for(nb.connect(name), timeout)
    except TimeoutError:
        return False
