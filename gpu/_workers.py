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
import socket
import sys
import tempfile
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ._devices import parse_device

if TYPE_CHECKING:
    from numbeam.actors._runtime import Runtime

__all__ = ["Workers", "start", "workers"]

log = logging.getLogger("numbeam.gpu")

_SPARES = 1  # interpreters kept ready to take over a device
_BACKOFF_FIRST = 0.1  # seconds before starting a worker again after a failed start
_BACKOFF_MAX = 5.0


class _Worker:
    __slots__ = (
        "device",
        "failures",
        "gen",
        "listener",
        "node",
        "os_pid",
        "proc",
        "restarts",
        "status",
        "up",
        "up_since",
    )

    def __init__(self, device: str) -> None:
        self.device = device
        self.gen = 0  # incarnations so far
        self.node: str | None = None  # the current incarnation's node name
        self.listener: socket.socket | None = None  # its address, until a process has it
        self.proc: _Proc | None = None
        self.os_pid: int | None = None
        self.status = "stopped"
        self.restarts = 0
        self.failures = 0  # incarnations in a row that died before they ran
        self.up_since: float | None = None
        self.up = asyncio.Event()  # set while an incarnation is running


class Workers:
    """The device workers of one runtime (``rt.extension("gpu.workers", Workers)``)."""

    def __init__(self, rt: Runtime) -> None:
        assert rt.dist is not None, "a runtime with devices is distributed"
        self.rt = rt
        self.dist = rt.dist
        self.dir = tempfile.mkdtemp(prefix="numbeam-workers-")
        self.workers = {d: _Worker(d) for d in rt.devices}
        self.spares: deque[_Proc] = deque()
        self.live: set[_Proc] = set()  # every process started and not yet reaped
        self.tasks: set[asyncio.Task[Any]] = set()
        self.spare_tasks: set[asyncio.Task[Any]] = set()  # (a subset of tasks)
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

    async def wait_running(self, devices: list[str], timeout: float | None) -> None:
        """Start the workers of `devices` if they are not, and wait until all run."""
        for d in devices:
            self.node_for(d)
        waits = [self.workers[d].up.wait() for d in devices]
        async with asyncio.timeout(timeout):
            await asyncio.gather(*waits)

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
        """Stop every worker and spare: close their control sockets (a worker then stops
        cleanly), wait (bounded), then kill what is left."""
        self.closing = True
        with contextlib.suppress(ValueError):
            self.dist.node_up_hooks.remove(self._node_up)
        if self.spare_tasks:  # a spare being started: let it start, then it is stopped
            await asyncio.wait(list(self.spare_tasks), timeout=self.rt.options.shutdown_timeout)
        for p in self.spares:  # a spare holds nothing yet: no need to wait for it
            p.kill()
        for w in self.workers.values():
            if w.listener is not None:
                w.listener.close()
                w.listener = None
            if w.node is not None and w.status != "running":
                self.dist.lost(w.node)  # what waits for it will not be sent
            w.status = "stopped"
        # Every process started, the ones between a spare and a worker included: all reaped.
        procs = list(self.live)
        for p in procs:
            p.close()
        waits = [asyncio.ensure_future(p.proc.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.rt.options.shutdown_timeout)
            for p in procs:
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
        """Name a new incarnation of `w` and make its address exist, then start it.

        The incarnation's ipc:// socket is bound and listening here and now, before any
        process owns it, and handed to the worker (ZeroMQ's ``ZMQ_USE_FD``): so its pids,
        handed out from this moment, are reachable from any node at once; a connection
        waits in the kernel's backlog until the worker takes it. This node itself holds what
        it sends there (`Distribution.expect`) until the worker says it is ready.
        """
        kind, index = parse_device(w.device)
        w.gen += 1
        short = f"{kind}{index}-{w.gen}-{os.getpid()}"
        path = f"{self.dir}/{kind}{index}-{w.gen}.sock"
        if w.listener is not None:
            w.listener.close()
        w.listener = listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(128)
        w.node = node = f"{short}@ipc://{path}"
        w.status = "starting" if w.gen == 1 else "restarting"
        w.proc = None
        w.os_pid = None
        w.up_since = None
        w.up.clear()
        slot = self.dist.expect(node)
        self._task(self._run(w, node, slot, listener, delay))

    def _task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run(
        self, w: _Worker, node: str, slot: int, listener: socket.socket, delay: float
    ) -> None:
        """Start the incarnation `node` of `w`, then watch it until its process exits."""
        proc = None
        try:
            if delay:
                await asyncio.sleep(delay)
            proc = await self._take_spare()
            if w.node != node or self.closing:
                proc.kill()
                await proc.proc.wait()
                proc.close()
                self.live.discard(proc)
                return
            w.proc, w.os_pid = proc, proc.proc.pid
            assignment = json.dumps(self._assignment(w.device, node, slot)).encode() + b"\n"
            socket.send_fds(proc.ctl, [assignment], [listener.fileno()])
            listener.close()  # (the worker has its own copy now)
            if w.listener is listener:
                w.listener = None
            line = await asyncio.wait_for(
                _read_line(proc.ctl), self.rt.options.worker_start_timeout
            )
            if not line.startswith(b"ready"):
                raise RuntimeError(f"it said {line!r}" if line else "it exited")
        except (OSError, RuntimeError, TimeoutError) as e:
            if proc is not None:
                proc.kill()
            if w.node == node and not self.closing:
                log.error("device %s: its worker did not start: %s", w.device, e or type(e))
                self._lost(w, node, "did not start")
            if proc is None:
                return
        else:
            if w.node == node and not self.closing:
                self.dist.release(node)  # connect: it listens now
        finally:
            listener.close()
        self._refill()
        try:
            code = await proc.proc.wait()
        finally:
            proc.close()
            self.live.discard(proc)
        if w.node == node and not self.closing:
            self._lost(w, node, f"exit status {code}")

    def _lost(self, w: _Worker, node: str, why: str) -> None:
        """The incarnation `node` of `w` is gone: name the next one first, then let links and
        monitors fire (a supervisor restarting a pinned child then reaches the new one)."""
        if w.node != node or self.closing:
            return
        if w.proc is not None:
            w.proc.kill()  # a worker whose link is lost is of no use: it starts again
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
                w.up.set()
                log.info("device %s: worker %s running (os pid %s)", w.device, name, w.os_pid)

    def _node_down(self, name: str) -> None:
        for w in self.workers.values():
            if w.node == name:
                self._lost(w, name, "its connection was lost")

    # -- spares ------------------------------------------------------------------------------

    def _assignment(self, device: str, node: str, slot: int) -> dict[str, Any]:
        opts = self.rt.options
        return {
            "device": device,
            "devices": list(self.rt.devices),
            "node": node,
            "parent": self.dist.name,
            "slot": slot,  # the spawn slot of our pids there
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

    async def _take_spare(self) -> _Proc:
        while self.spares:
            proc = self.spares.popleft()
            if proc.proc.returncode is None:
                return proc
            proc.close()
            self.live.discard(proc)
        return await self._start_proc()

    async def _start_proc(self) -> _Proc:
        proc = await _Proc.start(self.preload)
        self.live.add(proc)
        return proc

    def _refill(self) -> None:
        if self.closing or len(self.spares) + len(self.spare_tasks) >= _SPARES:
            return
        task = self._task(self._add_spare())
        self.spare_tasks.add(task)
        task.add_done_callback(self.spare_tasks.discard)

    async def _add_spare(self) -> None:
        try:
            proc = await self._start_proc()
        except OSError as e:
            log.error("devices: could not start a spare worker process: %s", e)
            return
        if self.closing:
            proc.kill()
            proc.close()
            await proc.proc.wait()
            self.live.discard(proc)
            return
        self.spares.append(proc)


def _main_path() -> str | None:
    """The script this program runs as ``__main__``, if it is one (not ``-m``, ``-c``)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or not isinstance(path, str):
        return None
    return os.path.abspath(path)


class _Proc:
    """A worker process (a spare until it takes over a device) and our end of its control
    socket, which is its stdin: the assignment and the listening socket go down it, its
    ``ready`` comes back up, and closing it stops the worker."""

    __slots__ = ("ctl", "proc")

    def __init__(self, proc: asyncio.subprocess.Process, ctl: socket.socket) -> None:
        self.proc = proc
        self.ctl = ctl

    @classmethod
    async def start(cls, preload: str) -> _Proc:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["NUMBEAM_WORKER_PRELOAD"] = preload
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "numbeam.gpu._worker",
                stdin=theirs.fileno(),
                env=env,
                # Its own session: a Ctrl-C meant for this program is not its worker's to
                # get; the worker stops when its control socket closes.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(proc, ours)

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def close(self) -> None:
        self.ctl.close()


async def _read_line(sock: socket.socket) -> bytes:
    """One line from `sock` (b"" if it closes first)."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            return b""
        buf += chunk
    return bytes(buf.split(b"\n", 1)[0])


async def start(devices: list[str] | None = None, timeout: float | None = 60.0) -> dict[str, Any]:
    """Start the workers of `devices` (default: all of this node's) if they are not running,
    wait until they all run, and return `workers()`. Not needed before spawning on a device
    (a spawn waits for its worker); useful to pay the start-up cost at a moment of your
    choosing. TimeoutError if they are not all up within `timeout` seconds."""
    from numbeam.actors._runtime import _device_node, _rt

    rt = _rt()
    wanted = list(rt.devices) if devices is None else list(devices)
    for d in wanted:
        _device_node(rt, d, None)  # ValueError for a device this node does not have
    ext = rt.extensions.get("gpu.workers")
    if ext is not None and wanted:
        await ext.wait_running(wanted, timeout)
    return workers()


def workers() -> dict[str, dict[str, Any]]:
    """Per device of this node: ``node`` (its worker's node name, None before it first
    starts), ``os_pid``, ``restarts``, ``status`` (``"stopped"`` before first use,
    ``"starting"``, ``"running"``, ``"restarting"``)."""
    from numbeam.actors._runtime import _rt

    rt = _rt()
    ext = rt.extensions.get("gpu.workers")
    return {} if ext is None else ext.info()
