"""Per-device worker nodes: started, watched and restarted by the node that drives the devices.

A worker is a child node in an OS process of its own that owns one device: processes spawned
with ``device=`` run there. Each worker is a fresh interpreter (``python -m
numbeam.gpu._worker``), never a fork, since a process that touched CUDA cannot be forked. It
is a *hidden* node on a private ``ipc://`` endpoint: this node connects to it, and it meets
no other node.

Restarts are what this module is for. A worker dies (SIGKILL, a CUDA fault that poisons its
context, out of memory): its link to this node goes down, or its OS process is reaped,
whichever is noticed first. At that moment a new *incarnation* is named (a new node name,
so that pids of the old one stay dead) before anyone hears of the loss, and only then do
links and monitors fire with ``"noconnection"``. So a supervisor restarting a pinned child
spawns it on the new incarnation: the spawn returns its pid at once, and the distribution
holds the request (a *deferred* peer, see `Distribution.expect`) until the worker listens.

What makes that fast is a *spare*: an interpreter started in advance, with numbeam, numpy and
ZeroMQ already imported, waiting on its stdin. Taking over a device is one line written to
it (the device, the node name, the cookie, ``sys.path``), after which it starts its node and
says ``ready`` on a pipe of its own. One spare is kept once any worker has started. Closing
a worker's stdin stops it cleanly; that is also how a worker learns its parent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ._devices import parse_device

if TYPE_CHECKING:
    from numbeam.actors._runtime import Runtime

__all__ = ["Workers", "workers"]

log = logging.getLogger("numbeam.gpu")

_SPARES = 1  # interpreters kept ready to take over a device
_BACKOFF_FIRST = 0.1  # seconds before starting a worker again after a failed start
_BACKOFF_MAX = 5.0


class _Worker:
    __slots__ = (
        "device",
        "failures",
        "gen",
        "node",
        "os_pid",
        "proc",
        "restarts",
        "status",
        "up_since",
    )

    def __init__(self, device: str) -> None:
        self.device = device
        self.gen = 0  # incarnations so far
        self.node: str | None = None  # the current incarnation's node name
        self.proc: asyncio.subprocess.Process | None = None
        self.os_pid: int | None = None
        self.status = "stopped"
        self.restarts = 0
        self.failures = 0  # incarnations in a row that died before they ran
        self.up_since: float | None = None


class Workers:
    """The device workers of one runtime (``rt.extension("gpu.workers", Workers)``)."""

    def __init__(self, rt: Runtime) -> None:
        assert rt.dist is not None, "a runtime with devices is distributed"
        self.rt = rt
        self.dist = rt.dist
        self.dir = tempfile.mkdtemp(prefix="numbeam-workers-")
        self.workers = {d: _Worker(d) for d in rt.devices}
        self.spares: deque[asyncio.subprocess.Process] = deque()
        self.spares_starting = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self.preload = "cupy" if any(d.startswith("cuda:") for d in rt.devices) else ""
        self.dist.node_up_hooks.append(self._node_up)
        self.dist.node_down_hooks.append(self._node_down)

    # -- what the runtime asks ---------------------------------------------------------------

    def start_all(self) -> None:
        for w in self.workers.values():
            if w.node is None:
                self._launch(w)

    def node_for(self, device: str) -> str:
        """The node of `device`'s worker, started if it is not; a spawn there is held until it
        is up."""
        w = self.workers[device]
        if w.node is None:
            self._launch(w)
        assert w.node is not None
        return w.node

    def info(self) -> dict[str, dict[str, Any]]:
        return {
            d: {
                "node": w.node,
                "os_pid": w.os_pid,
                "restarts": w.restarts,
                "status": w.status,
            }
            for d, w in self.workers.items()
        }

    async def close(self) -> None:
        """Stop every worker and spare: close their stdin, wait (bounded), then kill."""
        self.closing = True
        with contextlib.suppress(ValueError):
            self.dist.node_up_hooks.remove(self._node_up)
        procs = list(self.spares)
        for w in self.workers.values():
            if w.node is not None and w.status != "running":
                self.dist.lost(w.node)  # what waits for it will not be sent
            if w.proc is not None:
                procs.append(w.proc)
            w.status = "stopped"
        for p in procs:
            _close_stdin(p)
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.rt.options.shutdown_timeout)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5.0)
        with contextlib.suppress(ValueError):
            self.dist.node_down_hooks.remove(self._node_down)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- incarnations ------------------------------------------------------------------------

    def _launch(self, w: _Worker, delay: float = 0.0) -> None:
        """Name a new incarnation of `w` (what is sent to it waits), then start it."""
        kind, index = parse_device(w.device)
        w.gen += 1
        short = f"{kind}{index}-{w.gen}-{os.getpid()}"
        w.node = node = f"{short}@ipc://{self.dir}/{kind}{index}-{w.gen}.sock"
        w.status = "starting" if w.gen == 1 else "restarting"
        w.proc = None
        w.os_pid = None
        w.up_since = None
        self.dist.expect(node)
        self._task(self._run(w, node, delay))

    def _task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, w: _Worker, node: str, delay: float) -> None:
        """Start the incarnation `node` of `w`, then watch it until its process exits."""
        if delay:
            await asyncio.sleep(delay)
        proc = None
        try:
            proc = await self._take_spare()
            if w.node != node or self.closing:
                _close_stdin(proc)
                return
            w.proc, w.os_pid = proc, proc.pid
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(self._assignment(w.device, node)).encode() + b"\n")
            await proc.stdin.drain()
            ready_fd = _ready_fds.pop(proc.pid)
            try:
                line = await asyncio.wait_for(
                    _read_line(ready_fd), self.rt.options.worker_start_timeout
                )
            finally:
                os.close(ready_fd)
            if not line.startswith(b"ready"):
                raise RuntimeError(f"it said {line!r}")
        except (OSError, RuntimeError, TimeoutError, ConnectionError) as e:
            if w.node == node and not self.closing:
                log.error("device %s: its worker did not start: %s", w.device, e or type(e))
                if proc is not None and proc.returncode is None:
                    proc.kill()
                self._lost(w, node, "did not start")
            if proc is None:
                return
        else:
            if w.node == node and not self.closing:
                self.dist.release(node)  # connect: it listens now
        self._refill()
        code = await proc.wait()
        if w.node == node and not self.closing:
            self._lost(w, node, f"exit status {code}")

    def _lost(self, w: _Worker, node: str, why: str) -> None:
        """The incarnation `node` of `w` is gone: name the next one first, then let links and
        monitors fire (a supervisor restarting a pinned child then reaches the new one)."""
        if w.node != node or self.closing:
            return
        proc = w.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # a worker whose link is lost is of no use: it starts again
        ran = w.status == "running"
        w.failures = 0 if ran else w.failures + 1
        w.restarts += 1
        delay = 0.0
        if w.failures:
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (w.failures - 1))
        log.warning(
            "device %s: worker %s (os pid %s) lost (%s); starting it again%s",
            w.device,
            node,
            w.os_pid,
            why,
            f" in {delay:.1f} s" if delay else "",
        )
        self._launch(w, delay)
        self.dist.lost(node)

    def _node_up(self, name: str) -> None:
        for w in self.workers.values():
            if w.node == name:
                w.status = "running"
                w.up_since = time.monotonic()
                log.info("device %s: worker %s running (os pid %s)", w.device, name, w.os_pid)

    def _node_down(self, name: str) -> None:
        for w in self.workers.values():
            if w.node == name:
                self._lost(w, name, "its connection was lost")

    # -- spares ------------------------------------------------------------------------------

    def _assignment(self, device: str, node: str) -> dict[str, Any]:
        opts = self.rt.options
        return {
            "device": device,
            "devices": list(self.rt.devices),
            "node": node,
            "parent": self.dist.name,
            "cookie": self.dist.cookie.decode(),  # (a cookie file holds text)
            "path": [p for p in sys.path if isinstance(p, str)],
            "main": _main_path(),
            "options": {
                "uvloop": opts.uvloop,
                "curve": opts.curve,
                "heartbeat_interval": opts.heartbeat_interval,
                "heartbeat_timeout": opts.heartbeat_timeout,
                "connect_timeout": opts.connect_timeout,
                "max_message_size": opts.max_message_size,
                "tensor_threshold": opts.tensor_threshold,
                "tensor_handles": opts.tensor_handles,
                "shutdown_timeout": opts.shutdown_timeout,
            },
        }

    async def _take_spare(self) -> asyncio.subprocess.Process:
        while self.spares:
            proc = self.spares.popleft()
            if proc.returncode is None:
                return proc
            _ready_fds.pop(proc.pid, None)
        return await _start_spare(self.preload)

    def _refill(self) -> None:
        if self.closing or len(self.spares) + self.spares_starting >= _SPARES:
            return
        self.spares_starting += 1
        self._task(self._add_spare())

    async def _add_spare(self) -> None:
        try:
            proc = await _start_spare(self.preload)
        except OSError as e:
            log.error("devices: could not start a spare worker process: %s", e)
            return
        finally:
            self.spares_starting -= 1
        if self.closing:
            _close_stdin(proc)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return
        self.spares.append(proc)


def _main_path() -> str | None:
    """The script this program runs as ``__main__``, if it is one (not ``-m``, ``-c``)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or not isinstance(path, str):
        return None
    return os.path.abspath(path)


# The read end of each started process's ready pipe, by OS pid, until it is taken.
_ready_fds: dict[int, int] = {}


async def _start_spare(preload: str) -> asyncio.subprocess.Process:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    env = dict(os.environ)
    env["NUMBEAM_WORKER_PRELOAD"] = preload
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "numbeam.gpu._worker",
            str(w),
            stdin=asyncio.subprocess.PIPE,
            pass_fds=(w,),
            env=env,
            # Its own session: a Ctrl-C meant for this program is not its worker's to get;
            # the worker stops when its stdin closes.
            start_new_session=True,
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    _ready_fds[proc.pid] = r
    return proc


def _close_stdin(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(Exception):
            proc.stdin.close()


async def _read_line(fd: int) -> bytes:
    """One line from the pipe `fd` (b"" if it closes first), without blocking the loop."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = bytearray()
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda f=fut: f.done() or f.set_result(None))  # type: ignore[misc]
        try:
            await fut
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            return bytes(buf)
        buf += chunk
        if b"\n" in buf:
            return bytes(buf.split(b"\n", 1)[0])


def workers() -> dict[str, dict[str, Any]]:
    """Per device of this node: ``node`` (its worker's node name, None before it first
    starts), ``os_pid``, ``restarts``, ``status`` (``"stopped"`` before first use,
    ``"starting"``, ``"running"``, ``"restarting"``)."""
    from numbeam.actors._runtime import _rt

    rt = _rt()
    ext = rt.extensions.get("gpu.workers")
    return {} if ext is None else ext.info()
