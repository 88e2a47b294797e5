"""Distribution benchmarks: numbeam nodes against raw pyzmq, over tcp:// and ipc://, same run.

Each benchmark does one piece of work twice: between two numbeam nodes (this process is node
A, under `nb.run` with its defaults; node B is ``python -m numbeam node`` in another OS process,
and its side is a process spawned there by module path from this file), and with raw pyzmq
sockets (blocking, in this process) against a server in another OS process
(``python bench/transport.py --serve-raw ...``). Both sides pack and unpack the same msgpack
payloads, the same way round (lock-step or send-all-then-ack), over the same transport, with
the same CPU placement (see `Placement`). Runs are interleaved (raw, numbeam, repeat) and the
best of each side is kept. Only the measured region is timed: starting the node and servers,
connecting, spawning the partner and waiting for its "ready" are not. Every subprocess is
stopped and every ipc socket file removed at the end, whatever happened (a SIGKILL of this
process included, on Linux: the children die with it; only the temporary folder stays then).

    python bench/transport.py            # full sizes, best of 3 (about 1.5 min on 2 cores)
    python bench/transport.py --quick    # small sizes, one run: a smoke run of a few seconds
    python bench/transport.py --cpus same --only ping-pong --transport tcp
    python bench/transport.py --profile one-way   # cProfile of both numbeam nodes' sides

This file is also the module the benchmark spawns on node B (``transport:echo`` and friends,
with ``--path bench``); only the standard library, numbeam, numpy, msgpack and zmq are needed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import io
import os
import pstats
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _report
import msgpack
import numpy as np
import zmq
from _report import rate

import numbeam as nb

perf_counter = time.perf_counter

HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem  # the name node B imports this file by (it runs with --path HERE)
LIMIT = 300.0  # seconds: a bound on every wait, so a dead peer fails the run instead of hanging
START_LIMIT = 60.0  # seconds for a subprocess to print its ready line
ARRAY_DTYPE = np.float64

# ---- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each benchmark does, and how many times each side runs."""

    pingpong: int  # round trips
    oneway: int  # messages
    array_mb: int  # size of the array, in MB (10**6 bytes)
    array_transfers: int  # arrays sent (each acknowledged before the next) per run
    repeats: int  # runs of each side; the best is kept


FULL = Sizes(pingpong=20_000, oneway=200_000, array_mb=100, array_transfers=10, repeats=3)
QUICK = Sizes(pingpong=500, oneway=5_000, array_mb=10, array_transfers=2, repeats=1)

# ---- node B's side: spawned there by module path ("transport:echo") ---------------------------


async def echo(peer: nb.Pid) -> None:
    """Send every message back to `peer` until None."""
    receive, send = nb.receive, nb.send
    send(peer, ("ready", nb.self()))
    while True:
        msg = await receive()
        if msg is None:
            return
        send(peer, msg)


async def count(peer: nb.Pid, n: int) -> None:
    """Receive `n` messages, then tell `peer` once."""
    receive = nb.receive
    nb.send(peer, ("ready", nb.self()))
    for _ in range(n):
        await receive()
    nb.send(peer, ("done", n))


async def count_named(peer: nb.Pid, n: int, name: str) -> None:
    """`count`, registered as `name` (sent to as ``(name, node)``)."""
    nb.register(name, nb.self())
    await count(peer, n)


class CastCounter(nb.GenServer):
    """Counts `n` casts, then tells `peer` once and stops."""

    async def init(self, peer: nb.Pid, n: int) -> None:
        self.peer, self.n, self.left = peer, n, n
        nb.send(peer, ("ready", nb.self()))

    async def handle_cast(self, request: Any) -> None:
        self.left -= 1
        if not self.left:
            nb.send(self.peer, ("done", self.n))
            raise nb.Stop("normal")


async def cast_server(peer: nb.Pid, n: int, name: str) -> None:
    """Start a `CastCounter` registered as `name` on this node (it outlives this process)."""
    await CastCounter.start(peer, n, name=name)


async def read_array(peer: nb.Pid) -> None:
    """For each array received, send `peer` its first element, until None."""
    receive, send = nb.receive, nb.send
    send(peer, ("ready", nb.self()))
    while True:
        arr = await receive()
        if arr is None:
            return
        send(peer, float(arr[0]))


_profiler: cProfile.Profile | None = None


async def profile_start(peer: nb.Pid) -> None:
    """Start profiling this node's event-loop thread (everything it runs, not only this)."""
    global _profiler
    _profiler = cProfile.Profile()
    _profiler.enable()
    nb.send(peer, ("ready", nb.self()))


async def profile_stop(peer: nb.Pid, top: int) -> None:
    """Stop profiling; send `peer` the top functions by own time, as text."""
    global _profiler
    prof, _profiler = _profiler, None
    if prof is None:
        nb.send(peer, ("profile", "no profile was started on this node"))
        return
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    nb.send(peer, ("profile", out.getvalue()))


# ---- node A's side: the measured region, under nb.run ----------------------------------------


async def _start_peer(b_node: str, fn: str, *args: Any) -> nb.Pid:
    """Spawn `fn` on node B (by module path) and wait until it says it is ready."""
    nb.spawn(f"{MODULE}:{fn}", nb.self(), *args, node=b_node)
    tag, pid = await nb.receive(timeout=LIMIT)
    if tag != "ready":
        raise RuntimeError(f"{fn} on {b_node} answered {tag!r} instead of 'ready'")
    return pid


async def nb_pingpong(b_node: str, n: int) -> float:
    peer = await _start_peer(b_node, "echo")
    receive, send = nb.receive, nb.send
    async with asyncio.timeout(LIMIT):
        t0 = perf_counter()
        for i in range(n):
            send(peer, ("m", i))
            await receive()
        elapsed = perf_counter() - t0
    send(peer, None)
    return elapsed


async def nb_oneway(b_node: str, n: int) -> float:
    peer = await _start_peer(b_node, "count", n)
    send = nb.send
    async with asyncio.timeout(LIMIT):
        t0 = perf_counter()
        for i in range(n):
            send(peer, ("m", i))
        done = await nb.receive()
        elapsed = perf_counter() - t0
    if done != ("done", n):
        raise RuntimeError(f"the counter answered {done!r}")
    return elapsed


async def nb_oneway_named(b_node: str, n: int) -> float:
    """`nb_oneway` to ``(name, node)`` instead of a pid."""
    await _start_peer(b_node, "count_named", n, "bench_count")
    dest, send = ("bench_count", b_node), nb.send
    async with asyncio.timeout(LIMIT):
        t0 = perf_counter()
        for i in range(n):
            send(dest, ("m", i))
        done = await nb.receive()
        elapsed = perf_counter() - t0
    if done != ("done", n):
        raise RuntimeError(f"the counter answered {done!r}")
    return elapsed


async def nb_cast_named(b_node: str, n: int) -> float:
    """`nb_oneway` as `nb.cast` to a GenServer registered on node B, by ``(name, node)``."""
    await _start_peer(b_node, "cast_server", n, "bench_cast")
    dest, cast = ("bench_cast", b_node), nb.cast
    async with asyncio.timeout(LIMIT):
        t0 = perf_counter()
        for i in range(n):
            cast(dest, ("m", i))
        done = await nb.receive()
        elapsed = perf_counter() - t0
    if done != ("done", n):
        raise RuntimeError(f"the server answered {done!r}")
    return elapsed


async def nb_array(b_node: str, arr: np.ndarray, transfers: int) -> float:
    peer = await _start_peer(b_node, "read_array")
    receive, send = nb.receive, nb.send
    async with asyncio.timeout(LIMIT):
        t0 = perf_counter()
        for _ in range(transfers):
            send(peer, arr)
            first = await receive()
        elapsed = perf_counter() - t0
    if first != float(arr[0]):
        raise RuntimeError(f"the reader saw {first!r} as the first element")
    send(peer, None)
    return elapsed


async def _nb_measure(b_node: str, work: Callable[..., Any], args: tuple[Any, ...]) -> float:
    async with asyncio.timeout(LIMIT):
        if not await nb.connect(b_node):
            raise RuntimeError(f"cannot connect to node {b_node}")
    return float(await work(b_node, *args))


async def _nb_profiled(
    b_node: str, work: Callable[..., Any], args: tuple[Any, ...], top: int
) -> tuple[float, str, str]:
    """`work` with both nodes' event-loop threads under cProfile; their top functions."""
    async with asyncio.timeout(LIMIT):
        if not await nb.connect(b_node):
            raise RuntimeError(f"cannot connect to node {b_node}")
    await _start_peer(b_node, "profile_start")
    prof = cProfile.Profile()
    prof.enable()
    elapsed = float(await work(b_node, *args))
    prof.disable()
    nb.spawn(f"{MODULE}:profile_stop", nb.self(), top, node=b_node)
    _, b_text = await nb.receive(lambda m: type(m) is tuple and m[0] == "profile", timeout=LIMIT)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return elapsed, out.getvalue(), b_text


# ---- raw pyzmq: the client side (blocking sockets, this process) -------------------------------


def _client(ctx: zmq.Context[Any], kind: int, endpoint: str) -> zmq.Socket[Any]:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, int(LIMIT * 1000))  # a dead server fails the run (zmq.Again)
    s.setsockopt(zmq.SNDTIMEO, int(LIMIT * 1000))
    s.connect(endpoint)
    return s


def raw_pingpong(ctx: zmq.Context[Any], endpoints: list[str], n: int) -> float:
    s = _client(ctx, zmq.DEALER, endpoints[0])
    try:
        packb, unpackb, send, recv = msgpack.packb, msgpack.unpackb, s.send, s.recv
        send(packb(("ready", 0)))
        unpackb(recv())  # connected, and the server is in its loop
        t0 = perf_counter()
        for i in range(n):
            send(packb(("m", i)))
            unpackb(recv())
        return perf_counter() - t0
    finally:
        s.close()


def raw_oneway(ctx: zmq.Context[Any], endpoints: list[str], n: int) -> float:
    push = _client(ctx, zmq.PUSH, endpoints[0])
    ctl = _client(ctx, zmq.DEALER, endpoints[1])
    try:
        packb, send = msgpack.packb, push.send
        ctl.send(packb(n))
        msgpack.unpackb(ctl.recv())  # "ready": the server waits for n messages
        t0 = perf_counter()
        for i in range(n):
            send(packb(("m", i)))
        done = msgpack.unpackb(ctl.recv())
        elapsed = perf_counter() - t0
        if done != ["done", n]:
            raise RuntimeError(f"the raw counter answered {done!r}")
        return elapsed
    finally:
        push.close()
        ctl.close()


def raw_array(
    ctx: zmq.Context[Any], endpoints: list[str], arr: np.ndarray, transfers: int
) -> float:
    s = _client(ctx, zmq.DEALER, endpoints[0])
    try:
        send, recv, unpackb = s.send, s.recv, msgpack.unpackb
        send(b"")
        recv()  # connected
        t0 = perf_counter()
        for _ in range(transfers):
            send(arr, copy=False)  # type: ignore[call-overload]  # any buffer goes
            first = unpackb(recv())
        elapsed = perf_counter() - t0
        if first != float(arr[0]):
            raise RuntimeError(f"the raw reader saw {first!r} as the first element")
        return elapsed
    finally:
        s.close()


# ---- raw pyzmq: the servers (another OS process each: --serve-raw MODE ENDPOINT...) ------------


def serve_raw(mode: str, endpoints: list[str]) -> None:
    """Bind, print ``ready ENDPOINT...`` (the real ones), then serve until killed."""
    ctx = zmq.Context()
    socks = []
    kinds = {"echo": [zmq.ROUTER], "count": [zmq.PULL, zmq.ROUTER], "array": [zmq.ROUTER]}[mode]
    for kind, endpoint in zip(kinds, endpoints, strict=True):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(endpoint)
        socks.append(s)
    print("ready", *(s.getsockopt_string(zmq.LAST_ENDPOINT) for s in socks), flush=True)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    if mode == "echo":
        (r,) = socks
        recv, send = r.recv, r.send
        while True:
            ident = recv()
            data = recv()
            send(ident, zmq.SNDMORE)
            send(packb(unpackb(data)))
    elif mode == "count":
        pull, ctl = socks
        recv = pull.recv
        while True:
            ident, header = ctl.recv_multipart()
            n = unpackb(header)
            ctl.send_multipart([ident, packb("ready")])
            for _ in range(n):
                unpackb(recv())
            ctl.send_multipart([ident, packb(("done", n))])
    else:
        (r,) = socks
        recv, send = r.recv, r.send
        while True:
            ident = recv()
            frame = recv(copy=False)
            if len(frame) == 0:  # the client's "are you there"
                send(ident, zmq.SNDMORE)
                send(b"")
                continue
            first = float(np.frombuffer(frame.buffer, ARRAY_DTYPE)[0])
            send(ident, zmq.SNDMORE)
            send(packb(first))


# ---- subprocesses: node B and the raw servers --------------------------------------------------


# Run in the child before it execs the real command (Linux): SIGTERM it when the benchmark
# process dies, however it dies (the signal survives exec; the getppid check closes the race
# with a parent that died before prctl), and pin it to its CPUs, which every thread it starts
# inherits (ZeroMQ's I/O thread included).
_GUARD = """\
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
if sys.argv[2]:
    os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})
os.execvp(sys.argv[3], sys.argv[3:])
"""


class Child:
    """A subprocess that prints a ready line; its stderr goes to a log file shown on failure."""

    def __init__(
        self,
        what: str,
        argv: list[str],
        log: Path,
        env: dict[str, str],
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.what = what
        self.log = log
        if sys.platform == "linux":  # stop with us even if we are SIGKILLed (a test timeout)
            pin = ",".join(map(str, sorted(cpus))) if cpus is not None else ""
            argv = [sys.executable, "-c", _GUARD, str(os.getpid()), pin, *argv]
        elif cpus is not None:
            raise RuntimeError("pinning to CPUs needs Linux")
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        # A thread keeps reading stdout, so the pipe never fills and blocks the child.
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)

    def ready(self, accept: Callable[[list[str]], str | list[str] | None]) -> Any:
        """Wait for the first stdout line that `accept` turns into a value (not None)."""
        deadline = time.monotonic() + START_LIMIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.what}: no ready line in {START_LIMIT:.0f} s") from None
            if line is None:
                raise RuntimeError(f"{self.what} exited before it was ready:\n{self.stderr()}")
            value = accept(line.split())
            if value is not None:
                return value

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (a node stops cleanly), SIGKILL if it lingers; always reaped."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _node_ready(words: list[str]) -> str | None:
    if len(words) == 4 and words[:2] == ["numbeam", "node"] and words[3] == "ready":
        return words[2]
    return None


def _raw_ready(words: list[str]) -> list[str] | None:
    return words[1:] if len(words) >= 2 and words[0] == "ready" else None


RAW_MODES = {
    "ping-pong": "echo",
    "one-way": "count",
    "array": "array",
    "named": None,  # its baseline is numbeam's own one-way to a pid
    "cast": "count",
}


@dataclass
class Transport:
    """One transport's node B, raw servers and how to name node A."""

    name: str  # "tcp" or "ipc"
    tmp: Path
    b_node: str = ""
    raw: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # benchmark -> endpoints
    runs: int = 0

    def b_name(self) -> str:
        return "b@127.0.0.1:0" if self.name == "tcp" else f"b@ipc://{self.tmp}/b.sock"

    def a_name(self) -> str:
        # A fresh node per numbeam run; on ipc, a fresh path too (the old file may linger).
        self.runs += 1
        return "a@127.0.0.1:0" if self.name == "tcp" else f"a@ipc://{self.tmp}/a{self.runs}.sock"

    def raw_endpoints(self, mode: str) -> list[str]:
        n = 2 if mode == "count" else 1
        if self.name == "tcp":
            return ["tcp://127.0.0.1:*"] * n
        return [f"ipc://{self.tmp}/raw-{mode}-{i}.sock" for i in range(n)]


@contextmanager
def cluster(
    transports: list[str], benchmarks: list[str], cookie: str, cpus: frozenset[int] | None
) -> Iterator[list[Transport]]:
    """Start node B and the raw servers each transport needs (all at once, on `cpus`), and stop
    them after, whatever happened; the temporary folder (logs, ipc sockets) goes too."""
    tmp = Path(tempfile.mkdtemp(prefix="nb-bench-"))  # short: ipc paths are limited to ~100
    children: list[Child] = []
    env = dict(os.environ, NUMBEAM_COOKIE=cookie, PYTHONUNBUFFERED="1")
    env.pop("NUMBEAM_COOKIE_FILE", None)
    try:
        out = []
        waits: list[tuple[Transport, str | None, Child]] = []
        for t_name in transports:
            t = Transport(t_name, tmp / t_name)
            t.tmp.mkdir()
            argv = [sys.executable, "-m", "numbeam", "node", "--name", t.b_name()]
            argv += ["--path", str(HERE)]
            child = Child(f"node {t.b_name()}", argv, t.tmp / "node-b.log", env, cpus)
            children.append(child)
            waits.append((t, None, child))
            modes = {RAW_MODES[bench] for bench in benchmarks} - {None}
            for mode in sorted(m for m in modes if m is not None):
                argv = [sys.executable, __file__, "--serve-raw", mode, *t.raw_endpoints(mode)]
                log = t.tmp / f"{mode}.log"
                child = Child(f"raw {mode} server ({t_name})", argv, log, env, cpus)
                children.append(child)
                waits.append((t, mode, child))
            out.append(t)
        for t, for_mode, child in waits:
            if for_mode is None:
                t.b_node = child.ready(_node_ready)
            else:  # one raw server per mode, for every benchmark of that mode
                endpoints = child.ready(_raw_ready)
                for bench, mode in RAW_MODES.items():
                    if mode == for_mode:
                        t.raw[bench] = endpoints
        yield out
    finally:
        for child in children:
            try:
                child.stop()
            except Exception as e:  # keep stopping the others
                print(f"could not stop {child.what}: {e}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


# ---- CPU placement ----------------------------------------------------------------------------
# On a small machine the scheduler's placement decides a ping-pong: a wake-up on another CPU
# costs far more (an inter-processor interrupt; in a VM, an exit to the host) than one on the
# same CPU, and unpinned runs flip between the two from run to run (raw pyzmq ping-pong: 11k or
# 45k round trips/s on 2 vCPUs). So both sides run pinned the same way, in each placement asked
# for: "split" (each end on its own CPU, as two nodes on two cores), "same" (both ends on one
# CPU: every cost of either side adds up) and "any" (not pinned, as programs usually run; noisy).


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the two ends run: this process (node A, raw clients) and node B / raw servers."""

    name: str  # "split", "same" or "any"
    a: frozenset[int] | None  # None: not pinned
    b: frozenset[int] | None

    def describe(self) -> str:
        if self.a is None:
            return f"{self.name}: not pinned (the scheduler places every thread)"
        a, b = ",".join(map(str, sorted(self.a))), ",".join(map(str, sorted(self.b or ())))
        return f"{self.name}: node A and raw clients on CPU {a}, node B and raw servers on CPU {b}"


PLACEMENTS = ("split", "same", "any")


def placement(name: str) -> Placement | str:
    """The placement called `name`, or why this machine cannot have it."""
    if name == "any":
        return Placement(name, None, None)
    if not hasattr(os, "sched_setaffinity") or sys.platform != "linux":
        return "pinning to CPUs needs Linux"
    cpus = sorted(os.sched_getaffinity(0))
    if name == "same":
        return Placement(name, frozenset(cpus[:1]), frozenset(cpus[:1]))
    if len(cpus) < 2:
        return "needs 2 CPUs"
    return Placement(name, frozenset(cpus[:1]), frozenset(cpus[1:2]))


def _pin_self(cpus: frozenset[int] | set[int]) -> None:
    """Pin every thread of this process (ZeroMQ's I/O threads too); new ones inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that just ended
            pass


# ---- running and reporting --------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report."""

    name: str
    numbeam: str
    raw: str
    ratio: str
    target: str
    result: str


TARGETS = {"ping-pong": 0.5, "one-way": 0.5, "array": 0.7, "named": 0.8, "cast": 0.5}
BENCHMARKS = tuple(TARGETS)
TRANSPORTS = ("tcp", "ipc")


def _work(bench: str, sizes: Sizes, arr: np.ndarray) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Node A's coroutine function for `bench` and its arguments after node B's name."""
    if bench == "ping-pong":
        return nb_pingpong, (sizes.pingpong,)
    if bench == "one-way":
        return nb_oneway, (sizes.oneway,)
    if bench == "named":
        return nb_oneway_named, (sizes.oneway,)
    if bench == "cast":
        return nb_cast_named, (sizes.oneway,)
    return nb_array, (arr, sizes.array_transfers)


def _raw(
    bench: str, sizes: Sizes, arr: np.ndarray
) -> Callable[[zmq.Context[Any], list[str]], float]:
    if bench == "ping-pong":
        return lambda ctx, eps: raw_pingpong(ctx, eps, sizes.pingpong)
    if bench in ("one-way", "cast"):
        return lambda ctx, eps: raw_oneway(ctx, eps, sizes.oneway)
    return lambda ctx, eps: raw_array(ctx, eps, arr, sizes.array_transfers)


def _name(bench: str, sizes: Sizes) -> str:
    if bench == "ping-pong":
        return f"ping-pong ({sizes.pingpong / 1000:g}k round trips)"
    if bench == "one-way":
        return f"one-way ({sizes.oneway / 1000:g}k small messages)"
    if bench == "named":
        return f"one-way to (name, node) ({sizes.oneway / 1000:g}k) vs to a pid"
    if bench == "cast":
        return f"cast to a named GenServer ({sizes.oneway / 1000:g}k)"
    return f"{sizes.array_mb} MB array x {sizes.array_transfers}"


def measure(
    t: Transport, bench: str, sizes: Sizes, arr: np.ndarray, cookie: str, where: str
) -> Row:
    """Best time of each side over `sizes.repeats` interleaved runs (raw first); one row."""
    work, args = _work(bench, sizes, arr)
    raw = _raw(bench, sizes, arr)
    ctx = zmq.Context()
    best_raw = best_nb = float("inf")
    try:
        for _ in range(sizes.repeats):
            gc.collect()
            best_raw = min(best_raw, raw(ctx, t.raw[bench]))
            gc.collect()
            elapsed = nb.run(_nb_measure, t.b_node, work, args, node=t.a_name(), cookie=cookie)
            best_nb = min(best_nb, elapsed)
    finally:
        ctx.term()
    if bench == "array":
        mb = sizes.array_mb * sizes.array_transfers
        nb_s, raw_s = f"{mb / best_nb:.0f} MB/s", f"{mb / best_raw:.0f} MB/s"
    else:
        n = sizes.pingpong if bench == "ping-pong" else sizes.oneway
        nb_s, raw_s = rate(n / best_nb), rate(n / best_raw)
    target = TARGETS[bench]
    ratio = best_raw / best_nb
    return Row(
        f"{t.name} {_name(bench, sizes)}, {where}",
        nb_s,
        raw_s,
        f"{ratio:.3g}x",
        f">= {target:g}x",
        "PASS" if ratio >= target else "FAIL",
    )


ONE_WAY_FAMILY = ("one-way", "named", "cast")  # measured together, in one node A per run


async def _nb_measure_family(
    b_node: str, works: list[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[float]:
    """Each of `works` in turn, in one node A (one start-up for all: the smoke run is short)."""
    async with asyncio.timeout(LIMIT):
        if not await nb.connect(b_node):
            raise RuntimeError(f"cannot connect to node {b_node}")
    return [float(await work(b_node, *args)) for work, args in works]


def measure_family(
    t: Transport, benches: list[str], sizes: Sizes, cookie: str, where: str
) -> list[Row]:
    """One-way to a pid, to ``(name, node)`` and casts to a named GenServer: numbeam's sides
    in one node A per run (the pid one-way is named's baseline), raw PUSH/PULL once per run
    (the baseline of one-way and cast); interleaved, best of `sizes.repeats` each."""
    keys = ["one-way", *[b for b in benches if b != "one-way"]]
    n = sizes.oneway
    works = [_work(b, sizes, np.zeros(1))[0] for b in keys]
    best = dict.fromkeys(keys, float("inf"))
    best_raw = float("inf")
    raw_key = "one-way" if "one-way" in t.raw else "cast"
    ctx = zmq.Context()
    try:
        for _ in range(sizes.repeats):
            if "one-way" in benches or "cast" in benches:
                gc.collect()
                best_raw = min(best_raw, raw_oneway(ctx, t.raw[raw_key], n))
            gc.collect()
            got = nb.run(
                _nb_measure_family,
                t.b_node,
                [(w, (n,)) for w in works],
                node=t.a_name(),
                cookie=cookie,
            )
            for key, elapsed in zip(keys, got, strict=True):
                best[key] = min(best[key], elapsed)
    finally:
        ctx.term()
    rows = []
    for bench in benches:
        base = best["one-way"] if bench == "named" else best_raw
        base_s = rate(n / base) + (" (numbeam, to a pid)" if bench == "named" else "")
        ratio, target = base / best[bench], TARGETS[bench]
        rows.append(
            Row(
                f"{t.name} {_name(bench, sizes)}, {where}",
                rate(n / best[bench]),
                base_s,
                f"{ratio:.3g}x",
                f">= {target:g}x",
                "PASS" if ratio >= target else "FAIL",
            )
        )
    return rows


def _array(sizes: Sizes) -> np.ndarray:
    # Filled, so every page is touched before timing (np.zeros would map them lazily).
    n = sizes.array_mb * 10**6 // np.dtype(ARRAY_DTYPE).itemsize
    return np.full(n, 1.5, ARRAY_DTYPE)


def run_all(
    sizes: Sizes, where: list[str], transports: list[str], benchmarks: list[str]
) -> list[Row]:
    cookie = secrets.token_hex(16)
    arr = _array(sizes) if "array" in benchmarks else np.zeros(1, ARRAY_DTYPE)
    rows = []
    everywhere = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        for name in where:
            pl = placement(name)
            if isinstance(pl, str):
                for t_name in transports:
                    for bench in benchmarks:
                        n = f"{t_name} {_name(bench, sizes)}, {name}"
                        rows.append(Row(n, "-", "-", "-", "-", f"SKIP: {pl}"))
                continue
            if everywhere is not None:
                _pin_self(pl.a or everywhere)
            with cluster(transports, benchmarks, cookie, pl.b) as ts:
                for t in ts:
                    family = [b for b in benchmarks if b in ONE_WAY_FAMILY]
                    for bench in benchmarks:
                        if bench not in ONE_WAY_FAMILY:
                            rows.append(measure(t, bench, sizes, arr, cookie, name))
                        elif bench == family[0]:
                            rows.extend(measure_family(t, family, sizes, cookie, name))
    finally:
        if everywhere is not None:
            _pin_self(everywhere)
    return rows


def print_table(rows: list[Row]) -> None:
    _report.print_table(
        ("benchmark", "numbeam", "raw pyzmq", "ratio", "target", "result"),
        [dataclasses.astuple(r) for r in rows],
    )


def profile(sizes: Sizes, where: str, transport: str, bench: str, top: int = 30) -> None:
    """One numbeam run of `bench` with cProfile on node A (this process) and node B."""
    pl = placement(where)
    if isinstance(pl, str):
        raise SystemExit(f"cannot use placement {where!r}: {pl}")
    cookie = secrets.token_hex(16)
    arr = _array(sizes) if bench == "array" else np.zeros(1, ARRAY_DTYPE)
    work, args = _work(bench, sizes, arr)
    if pl.a is not None:
        _pin_self(pl.a)
    with cluster([transport], [], cookie, pl.b) as (t,):
        elapsed, a_text, b_text = nb.run(
            _nb_profiled, t.b_node, work, args, top, node=t.a_name(), cookie=cookie
        )
    print(f"{transport} {_name(bench, sizes)}, {where}: {elapsed:.3f} s under the profilers\n")
    print("=== node A (this process: the sender) " + "=" * 40)
    print(a_text)
    print("=== node B (the other OS process: the receiver) " + "=" * 30)
    print(b_text)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _version(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one run each (smoke test)")
    p.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these")
    p.add_argument("--transport", action="append", choices=TRANSPORTS, help="only these")
    p.add_argument(
        "--cpus",
        action="append",
        choices=PLACEMENTS,
        help="CPU placements to run (default: all three on Linux; any = not pinned)",
    )
    p.add_argument("--repeats", type=int, help="runs of each side (default 3, quick 1)")
    p.add_argument("--profile", choices=BENCHMARKS, help="cProfile both numbeam nodes on one")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--serve-raw", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve_raw:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        serve_raw(a.serve_raw[0], a.serve_raw[1:])
        return 0
    # A plain kill (or a test's timeout) still stops the subprocesses: see cluster's finally.
    signal.signal(signal.SIGTERM, _terminate)
    sizes = QUICK if a.quick else FULL
    if a.repeats is not None:
        if a.repeats < 1:
            p.error(f"--repeats must be >= 1, got {a.repeats}")
        sizes = dataclasses.replace(sizes, repeats=a.repeats)
    transports = a.transport or list(TRANSPORTS)
    where = a.cpus or (list(PLACEMENTS) if sys.platform == "linux" else ["any"])
    if a.profile:
        profile(sizes, where[0], transports[0], a.profile)
        return 0
    benchmarks = [b for b in BENCHMARKS if b in (a.only or BENCHMARKS)]
    print(
        f"numbeam {nb.__version__}, Python {sys.version.split()[0]}, pyzmq {zmq.__version__} "
        f"(libzmq {zmq.zmq_version()}), msgpack {_version(msgpack.version)}, "
        f"{os.cpu_count()} CPUs"
    )
    print("numbeam: node A here under nb.run (defaults), node B a `numbeam node` process")
    print("raw: blocking pyzmq sockets here, a `--serve-raw` server process on the other end")
    for name in where:
        pl = placement(name)
        print(pl.describe() if isinstance(pl, Placement) else f"{name}: skipped ({pl})")
    print(f"mode: {'quick' if a.quick else 'full'}, best of {sizes.repeats} run(s) per side\n")
    t0 = perf_counter()
    rows = run_all(sizes, where, transports, benchmarks)
    print_table(rows)
    print(f"\n({perf_counter() - t0:.1f} s)")
    if a.strict and any(r.result == "FAIL" for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
