"""The program of a device worker process: ``python -m numbeam.gpu._worker``.

Its stdin is a Unix socket shared with its parent (the control socket). Started by
`numbeam.gpu._workers` as a *spare*, it imports what a node needs, then waits there for one
line, a JSON object naming the device to take over, its node name, the cookie, the parent's
spawn slot and ``sys.path``, which comes with one file descriptor: the socket its parent
already bound and listens on at the node's ``ipc://`` address. It then makes that device its
own (for CUDA: CuPy's current device, and its context created), starts a hidden node on that
socket (ZeroMQ's ``ZMQ_USE_FD``), answers ``ready`` and serves remote spawns. It stops cleanly
when the control socket closes: when its parent stops it, and when its parent dies. A spare
that was never needed sees the socket close before any assignment, and ends at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import runpy
import socket
import sys
import types
from collections.abc import Callable
from typing import Any

from numbeam.gpu import _devices
from numbeam.transport import _node

import numbeam as nb


async def _serve(assignment: dict[str, Any], ctl: socket.socket) -> None:
    from numbeam.actors._runtime import _rt

    _devices.set_known(assignment["devices"])
    dist = _rt().dist
    assert dist is not None
    # Pids the parent hands out for this worker before it connects are valid here at once.
    dist.pre_grant(assignment["parent"], assignment["slot"])
    if assignment["device"].startswith("cuda:"):
        _rt().crash_hooks.append(_check_cuda_context)
    loop = asyncio.get_running_loop()
    ctl.setblocking(False)
    await loop.sock_sendall(ctl, b"ready\n")
    while await loop.sock_recv(ctl, 4096):
        pass  # runs until the parent closes the control socket (or dies)


def _read_assignment(ctl: socket.socket) -> tuple[dict[str, Any], int] | None:
    """The assignment line and the listening socket that comes with it; None at EOF."""
    data, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 1)
    if not data:
        return None
    buf = bytearray(data)
    while not buf.endswith(b"\n"):
        more = ctl.recv(1 << 20)
        if not more:
            return None
        buf += more
    if len(fds) != 1:
        raise RuntimeError(f"the assignment came with {len(fds)} descriptors, not 1")
    return json.loads(buf), fds[0]


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


def _check_cuda_context(pid: Any, exc: BaseException) -> None:
    """After a crash: if the CUDA context is broken (an illegal address, a kernel fault: CUDA
    errors that stick to the context, which nothing but a new process clears), this worker is
    of no use, so it exits at once and its parent starts a new one on a fresh context."""
    import cupy

    try:
        cupy.cuda.runtime.deviceSynchronize()  # raises the context's sticky error, if any
    except cupy.cuda.runtime.CUDARuntimeError as e:
        logging.getLogger("numbeam.gpu").critical(
            "%s: the CUDA context is broken after %r crashed (%s); exiting so that the "
            "worker is started again",
            _devices.current(),
            pid,
            e,
        )
        logging.shutdown()
        os._exit(70)


def _take_device(device: str) -> None:
    kind, index = _devices.parse_device(device)
    if kind == "cuda":
        import cupy  # type: ignore[import-not-found]

        cupy.cuda.Device(index).use()
        cupy.cuda.runtime.free(0)  # create the context now, not on the first call
    _devices.set_current(device)


def main() -> int:
    if os.environ.get("NUMBEAM_WORKER_PRELOAD") == "cupy":
        try:
            import cupy  # noqa: F401
        except ImportError:
            pass
    ctl = socket.socket(fileno=0)  # stdin is our control socket, shared with the parent
    got = _read_assignment(ctl)
    if got is None:
        return 0  # a spare that was not needed
    assignment, listen_fd = got
    for p in reversed(assignment["path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    tag = f"[{assignment['device']} worker]"
    logging.basicConfig(level=logging.WARNING, format=f"{tag} %(levelname)s %(name)s: %(message)s")
    _take_device(assignment["device"])
    if assignment.get("main"):
        _node.main_loader = _main_loader(assignment["main"])
    _node.preset_listen_fd = listen_fd
    nb.run(
        _serve,
        assignment,
        ctl,
        node=assignment["node"],
        cookie=assignment["cookie"],
        devices=[],
        **assignment["options"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
