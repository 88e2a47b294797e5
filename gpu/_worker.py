"""The program of a device worker process: ``python -m numbeam.gpu._worker READY_FD``.

Started by `numbeam.gpu._workers` as a *spare*: it imports what a node needs, then waits for
one line on stdin, a JSON object naming the device to take over, its node name, the cookie and
the parent's ``sys.path``. It then makes that device its own (for CUDA: CuPy's current device,
and its context created), starts a hidden node on the private ``ipc://`` endpoint it was
given, writes ``ready`` to the pipe READY_FD and serves remote spawns. It stops cleanly when
its stdin closes: when its parent stops it, and when its parent dies. An empty stdin (a spare
that was never needed) ends it at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import runpy
import sys
import types
from collections.abc import Callable
from typing import Any

from numbeam.gpu import _devices

import numbeam as nb


async def _serve(assignment: dict[str, Any], ready_fd: int) -> None:
    _devices.set_known(assignment["devices"])
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    loop = asyncio.get_running_loop()
    eof = loop.create_future()

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and not eof.done():
            eof.set_result(None)

    os.set_blocking(0, False)
    loop.add_reader(0, on_stdin)
    try:
        await eof
    finally:
        loop.remove_reader(0)


def _main_loader(path: str) -> Callable[[], types.ModuleType]:
    """Loads the parent's ``__main__`` script once, on first need, as ``__mp_main__`` (its
    ``if __name__ == "__main__":`` block does not run), as multiprocessing's spawn does."""
    loaded: list[types.ModuleType] = []

    def load() -> types.ModuleType:
        if loaded:
            return loaded[0]
        mod = types.ModuleType("__mp_main__")
        mod.__file__ = path
        try:
            mod.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
        except Exception as e:
            raise RuntimeError(
                f"the device worker could not load {path}, the parent's script, to find a "
                f"function defined there: {e!r}; guard the script's entry point with "
                "`if __name__ == '__main__':` (as for multiprocessing), or define the function "
                "in a module"
            ) from e
        sys.modules["__mp_main__"] = mod
        loaded.append(mod)
        return mod

    return load


def _take_device(device: str) -> None:
    kind, index = _devices.parse_device(device)
    if kind == "cuda":
        import cupy  # type: ignore[import-not-found]

        cupy.cuda.Device(index).use()
        cupy.cuda.runtime.free(0)  # create the context now, not on the first call
    _devices.set_current(device)


def main() -> int:
    ready_fd = int(sys.argv[1])
    if os.environ.get("NUMBEAM_WORKER_PRELOAD") == "cupy":
        try:
            import cupy  # noqa: F401
        except ImportError:
            pass
    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # a spare that was not needed
    assignment = json.loads(line)
    for p in reversed(assignment["path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    tag = f"[{assignment['device']} worker]"
    logging.basicConfig(level=logging.WARNING, format=f"{tag} %(levelname)s %(name)s: %(message)s")
    _take_device(assignment["device"])
    if assignment.get("main"):
        from numbeam.transport import _node

        _node.main_loader = _main_loader(assignment["main"])
    nb.run(
        _serve,
        assignment,
        ready_fd,
        node=assignment["node"],
        cookie=assignment["cookie"],
        devices=[],
        **assignment["options"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
