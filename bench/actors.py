"""The classic actor benchmarks, numbeam against the same work done with bare asyncio.

Each benchmark does one piece of work twice in the same run: with numbeam processes under
`nb.run` (uvloop when installed, the way users run programs; also on the default asyncio loop
for transparency), and with `asyncio.Queue` / `loop.create_task` under `asyncio.run` (the
default event loop), which is the baseline the project's speed targets are stated against.
The work is identical on both sides (same message values, same send-all-then-drain or
lock-step pattern, same parking condition), the runs are interleaved (baseline, numbeam,
numbeam on asyncio's loop, repeat) and the best run of each side is kept, so a noisy
neighbour or a warm-up hurts both sides alike. Only the measured region is timed: setting up
and tearing down the processes or tasks is not. Memory is measured in fresh subprocesses so
that one benchmark's freed memory does not hide the next one's growth.

    python bench/actors.py            # full sizes (about a minute on 2 cores)
    python bench/actors.py --quick    # small sizes, a smoke run of a few seconds
    python bench/actors.py --profile ping-pong   # cProfile of numbeam's side of one benchmark
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import logging
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import _report
from _report import rate

import numbeam as nb

perf_counter = time.perf_counter

# ---- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each benchmark does, and how many times each side runs."""

    pingpong: int  # round trips
    calls: int  # nb.call round trips
    oneway: int  # messages
    spawn: int  # idle processes / tasks
    ring_size: int  # processes in the ring
    ring_laps: int  # times the token goes around
    restarts: int  # crashes under the supervisor
    repeats: int  # runs of each side; the best is kept


FULL = Sizes(
    pingpong=100_000,
    calls=100_000,
    oneway=1_000_000,
    spawn=100_000,
    ring_size=1_000,
    ring_laps=100,
    restarts=200,
    repeats=3,
)
QUICK = Sizes(
    pingpong=10_000,
    calls=10_000,
    oneway=50_000,
    spawn=10_000,
    ring_size=100,
    ring_laps=10,
    restarts=20,
    repeats=1,
)

# ---- ping-pong: two processes exchange one message each way, N times --------------------------


async def _nb_pong(peer: nb.Pid) -> None:
    receive, send = nb.receive, nb.send
    while True:
        msg = await receive()
        if msg is None:
            return
        send(peer, msg)


async def nb_pingpong(n: int) -> float:
    receive, send = nb.receive, nb.send
    pong = nb.spawn(_nb_pong, nb.self())
    await asyncio.sleep(0)  # let the partner park in receive
    t0 = perf_counter()
    for i in range(n):
        send(pong, i)
        await receive()
    elapsed = perf_counter() - t0
    send(pong, None)
    return elapsed


async def _aio_pong(inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
    put = outbox.put_nowait
    while True:
        msg = await inbox.get()
        if msg is None:
            return
        put(msg)


async def aio_pingpong(n: int) -> float:
    to_pong: asyncio.Queue[Any] = asyncio.Queue()
    to_ping: asyncio.Queue[Any] = asyncio.Queue()
    pong = asyncio.create_task(_aio_pong(to_pong, to_ping))
    await asyncio.sleep(0)
    put, get = to_pong.put_nowait, to_ping.get
    t0 = perf_counter()
    for i in range(n):
        put(i)
        await get()
    elapsed = perf_counter() - t0
    put(None)
    await pong
    return elapsed


# ---- ping-pong with a timeout on every receive: its cost against ping-pong without ----------


async def _nb_pong_timeout(peer: nb.Pid) -> None:
    receive, send = nb.receive, nb.send
    while True:
        msg = await receive(timeout=10)
        if msg is None:
            return
        send(peer, msg)


async def nb_pingpong_timeout(n: int) -> float:
    receive, send = nb.receive, nb.send
    pong = nb.spawn(_nb_pong_timeout, nb.self())
    await asyncio.sleep(0)
    t0 = perf_counter()
    for i in range(n):
        send(pong, i)
        await receive(timeout=10)
    elapsed = perf_counter() - t0
    send(pong, None)
    return elapsed


# ---- call: ask a server and wait for its answer, with a timeout ---------------------------------


class _CallEcho(nb.GenServer):
    async def handle_call(self, request: Any, caller: Any) -> Any:
        return request


async def nb_calls(n: int) -> float:
    call = nb.call
    server = await _CallEcho.start_link()
    t0 = perf_counter()
    for i in range(n):
        await call(server, i, 5.0)
    elapsed = perf_counter() - t0
    await nb.stop(server)
    return elapsed


async def _aio_server(inbox: asyncio.Queue[Any]) -> None:
    get = inbox.get
    while True:
        item = await get()
        if item is None:
            return
        request, fut = item
        if not fut.done():
            fut.set_result(request)


async def aio_calls(n: int) -> float:
    """The asyncio way of asking a task and waiting with a timeout: a Future through a Queue,
    awaited with `asyncio.wait_for`."""
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    server = asyncio.create_task(_aio_server(inbox))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    put, create_future, wait_for = inbox.put_nowait, loop.create_future, asyncio.wait_for
    t0 = perf_counter()
    for i in range(n):
        fut = create_future()
        put((i, fut))
        await wait_for(fut, 5.0)
    elapsed = perf_counter() - t0
    put(None)
    await server
    return elapsed


# ---- one-way: the sender sends all N messages, the receiver drains them and says "done" --------


async def _nb_sink(peer: nb.Pid, n: int) -> None:
    receive = nb.receive
    for _ in range(n):
        await receive()
    nb.send(peer, "done")


async def nb_oneway(n: int) -> float:
    send = nb.send
    sink = nb.spawn(_nb_sink, nb.self(), n)
    await asyncio.sleep(0)
    t0 = perf_counter()
    for i in range(n):
        send(sink, i)
    await nb.receive()
    return perf_counter() - t0


async def _aio_sink(inbox: asyncio.Queue[Any], done: asyncio.Queue[Any], n: int) -> None:
    get = inbox.get
    for _ in range(n):
        await get()
    done.put_nowait("done")


async def aio_oneway(n: int) -> float:
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    done: asyncio.Queue[Any] = asyncio.Queue()
    sink = asyncio.create_task(_aio_sink(inbox, done, n))
    await asyncio.sleep(0)
    put = inbox.put_nowait
    t0 = perf_counter()
    for i in range(n):
        put(i)
    await done.get()
    elapsed = perf_counter() - t0
    await sink
    return elapsed


# ---- spawn: start N idle processes / tasks and wait until every one is parked ------------------
# Each one counts itself down right before it parks, in the same step, and the last one
# resolves a future the spawner awaits: "all parked" whatever order first steps run in.


class _Parking:
    """How many idle processes or tasks have yet to park, and a future for when none has."""

    __slots__ = ("all_parked", "left")

    def __init__(self, n: int) -> None:
        self.left = n
        self.all_parked = asyncio.get_running_loop().create_future()

    def parked(self) -> None:
        self.left -= 1
        if not self.left:
            self.all_parked.set_result(None)


async def _nb_idle(parking: _Parking) -> None:
    parking.parked()
    await nb.receive()


async def _nb_spawn_idle(n: int) -> None:
    parking = _Parking(n)
    spawn = nb.spawn
    for _ in range(n):
        spawn(_nb_idle, parking)
    await parking.all_parked


async def nb_spawn(n: int) -> float:
    t0 = perf_counter()
    await _nb_spawn_idle(n)
    return perf_counter() - t0  # the runtime's shutdown kills them, untimed


async def _aio_idle(parking: _Parking, loop: asyncio.AbstractEventLoop) -> None:
    parking.parked()
    await loop.create_future()


async def _aio_spawn_idle(n: int) -> list[asyncio.Task[None]]:
    parking = _Parking(n)
    loop = asyncio.get_running_loop()
    create_task = loop.create_task
    tasks = []  # strong references, as numbeam's process table holds; append is cheap
    append = tasks.append
    for _ in range(n):
        append(create_task(_aio_idle(parking, loop)))
    await parking.all_parked
    return tasks


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def aio_spawn(n: int) -> float:
    t0 = perf_counter()
    tasks = await _aio_spawn_idle(n)
    elapsed = perf_counter() - t0
    await _cancel_all(tasks)
    return elapsed


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak RSS is the best we have (KiB on Linux, bytes on macOS)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


def _mem_now(method: str) -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else _rss_bytes()


async def _nb_spawn_memory(n: int, method: str) -> float:
    if method == "tracemalloc":
        tracemalloc.start()
    before = _mem_now(method)
    await _nb_spawn_idle(n)
    return (_mem_now(method) - before) / n


async def _aio_spawn_memory(n: int, method: str) -> float:
    if method == "tracemalloc":
        tracemalloc.start()
    before = _mem_now(method)
    tasks = await _aio_spawn_idle(n)
    per = (_mem_now(method) - before) / n
    await _cancel_all(tasks)
    return per


def memory_probe(side: str, method: str, n: int) -> float:
    """Bytes per idle process (side "numbeam") or task ("asyncio"), in this fresh process."""
    if side == "numbeam":
        return nb.run(_nb_spawn_memory, n, method)
    return asyncio.run(_aio_spawn_memory(n, method))


def measure_memory(side: str, method: str, n: int) -> float:
    """Run `memory_probe` in a fresh interpreter, so freed memory of earlier runs is not reused."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", side, method, str(n)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return float(out.stdout.strip().splitlines()[-1])


# ---- ring: M processes, each forwards a countdown token to the next ---------------------------


async def _nb_ring_member(main: nb.Pid) -> None:
    receive, send = nb.receive, nb.send
    nxt = await receive()
    while True:
        token = await receive()
        if token is None:
            return
        if token == 0:
            send(main, "done")
        else:
            send(nxt, token - 1)


async def nb_ring(size: int, laps: int) -> float:
    me = nb.self()
    ring = [nb.spawn(_nb_ring_member, me) for _ in range(size)]
    for i, pid in enumerate(ring):
        nb.send(pid, ring[(i + 1) % size])
    await asyncio.sleep(0)
    t0 = perf_counter()
    nb.send(ring[0], size * laps)
    await nb.receive()
    elapsed = perf_counter() - t0
    for pid in ring:
        nb.send(pid, None)
    return elapsed


async def _aio_ring_member(
    inbox: asyncio.Queue[Any], nxt: asyncio.Queue[Any], done: asyncio.Queue[Any]
) -> None:
    get, put = inbox.get, nxt.put_nowait
    while True:
        token = await get()
        if token is None:
            return
        if token == 0:
            done.put_nowait("done")
        else:
            put(token - 1)


async def aio_ring(size: int, laps: int) -> float:
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(size)]
    done: asyncio.Queue[Any] = asyncio.Queue()
    tasks = [
        asyncio.create_task(_aio_ring_member(queues[i], queues[(i + 1) % size], done))
        for i in range(size)
    ]
    await asyncio.sleep(0)
    t0 = perf_counter()
    queues[0].put_nowait(size * laps)
    await done.get()
    elapsed = perf_counter() - t0
    for q in queues:
        q.put_nowait(None)
    await asyncio.gather(*tasks)
    return elapsed


# ---- restart: crash a supervised GenServer, time until its replacement answers a call ---------


class _Echo(nb.GenServer):
    async def handle_call(self, request: Any, caller: Any) -> Any:
        return request

    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash requested by the benchmark")


async def _child_pid(sup: nb.Pid) -> nb.Pid | None:
    children = await nb.Supervisor.which_children(sup)
    return children[0][1] if children else None


async def nb_restart(crashes: int) -> list[float]:
    """Seconds from each crash to the restarted child's first reply.

    The clock starts when the crash is requested; the child crashes, the supervisor (linked)
    restarts it; we learn the new pid from `which_children` once our monitor of the old one
    fired, and stop the clock when the new child answers a call.
    """
    logger = logging.getLogger("numbeam")
    was_disabled, logger.disabled = logger.disabled, True  # 200 crash reports would swamp it
    try:
        async with asyncio.timeout(60):
            sup = await nb.Supervisor.start_link(
                [nb.Child(_Echo, id="s")], strategy="one_for_one", intensity=1000, period=1.0
            )
            pid = await _child_pid(sup)
            samples = []
            for _ in range(crashes):
                assert pid is not None
                ref = nb.monitor(pid)
                t0 = perf_counter()
                nb.cast(pid, "crash")
                await nb.receive(lambda m, ref=ref: type(m) is nb.Down and m.ref == ref)
                new = await _child_pid(sup)
                while new is None or new == pid:  # a supervisor that restarts asynchronously
                    new = await _child_pid(sup)
                if await nb.call(new, "ping") != "ping":
                    raise AssertionError("the restarted child answered the wrong value")
                samples.append(perf_counter() - t0)
                pid = new
            nb.unlink(sup)
            ref = nb.monitor(sup)
            nb.exit(sup, "shutdown")
            await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref)
            return samples
    finally:
        logger.disabled = was_disabled


def supervisor_missing() -> str | None:
    """Why the supervisor benchmark cannot run, or None if it can."""
    for name in ("Supervisor", "Child"):
        if not isinstance(getattr(nb, name, None), type):
            return f"nb.{name} is not implemented yet (supervision/ is a placeholder)"
    return None


# ---- running and reporting --------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report."""

    name: str
    numbeam: str
    numbeam_asyncio: str
    baseline: str
    ratio: str
    target: str
    result: str


def _runs(
    repeats: int,
    baseline: Callable[[], float],
    numbeam: Callable[[bool], float],
) -> tuple[float, float, float]:
    """Best (shortest) time of each side, interleaving baseline, numbeam, numbeam-on-asyncio."""
    best = [float("inf")] * 3
    for _ in range(repeats):
        for i, fn in enumerate((baseline, lambda: numbeam(True), lambda: numbeam(False))):
            gc.collect()
            best[i] = min(best[i], fn())
    return best[0], best[1], best[2]


def rate_row(
    name: str,
    work: int,
    repeats: int,
    baseline: Callable[[], Coroutine[Any, Any, float]],
    numbeam: Callable[..., Coroutine[Any, Any, float]],
    args: tuple[Any, ...],
    target: float | None,
) -> Row:
    """Time `work` units on each side; the ratio is numbeam's rate over the baseline's."""
    t_base, t_nb, t_nb_aio = _runs(
        repeats,
        lambda: asyncio.run(baseline()),
        lambda uv: nb.run(numbeam, *args, uvloop=uv),
    )
    ratio, ratio_aio = t_base / t_nb, t_base / t_nb_aio
    ok = target is None or ratio >= target
    _last_rate[name] = work / t_nb
    return Row(
        name,
        rate(work / t_nb),
        f"{rate(work / t_nb_aio)} ({ratio_aio:.2f}x)",
        rate(work / t_base),
        f"{ratio:.2f}x",
        "-" if target is None else f">= {target:g}x",
        ("PASS" if ok else "FAIL") if target is not None else "info",
    )


_last_rate: dict[str, float] = {}  # row name -> numbeam's rate, for the rows that follow

# Erlang/OTP on the same 2-core box (issue 11): gen_server:call, and a ping-pong whose
# receive has `after 10000`. Recorded figures, not measured here.
ERLANG_CALLS_PER_S = 910_000


def erlang_call_row(name: str) -> Row:
    r = _last_rate[name]
    return Row(
        "nb.call vs Erlang gen_server:call",
        rate(r),
        "-",
        f"{rate(ERLANG_CALLS_PER_S)} (Erlang, recorded)",
        f"{r / ERLANG_CALLS_PER_S:.2f}x",
        "-",
        "info",
    )


def timeout_row(n: int, repeats: int) -> Row:
    """Ping-pong with ``receive(timeout=10)`` on both sides against the same without a timeout,
    both under `nb.run` (interleaved, best of each): what a timeout costs."""
    t_plain, t_nb, t_nb_aio = _runs(
        repeats,
        lambda: nb.run(nb_pingpong, n),
        lambda uv: nb.run(nb_pingpong_timeout, n, uvloop=uv),
    )
    ratio = t_plain / t_nb
    return Row(
        f"ping-pong, receive(timeout=10) ({n // 1000}k)",
        rate(n / t_nb),
        f"{rate(n / t_nb_aio)}",
        f"{rate(n / t_plain)} (no timeout)",
        f"{ratio:.2f}x",
        ">= 0.9x",
        "PASS" if ratio >= 0.9 else "FAIL",
    )


def memory_rows(n: int) -> list[Row]:
    rows = []
    for method in ("tracemalloc", "rss"):
        per_nb = measure_memory("numbeam", method, n)
        per_task = measure_memory("asyncio", method, n)
        rows.append(
            Row(
                f"spawn {n // 1000}k: memory/process ({method})",
                f"{per_nb:.0f} B",
                "-",
                f"{per_task:.0f} B/task",
                f"{per_nb / per_task:.2f}x",
                "<= 2048 B",
                "PASS" if per_nb <= 2048 else "FAIL",
            )
        )
    return rows


def restart_row(crashes: int) -> Row:
    name = f"restart under one_for_one ({crashes} crashes)"
    missing = supervisor_missing()
    if missing is not None:
        return Row(name, "-", "-", "-", "-", "report median", f"SKIP: {missing}")
    out = []
    try:
        for uv in (True, False):
            s = sorted(nb.run(nb_restart, crashes, uvloop=uv))
            p90 = s[min(len(s) - 1, int(0.9 * len(s)))]
            out.append(f"{statistics.median(s) * 1e6:.0f} us (p90 {p90 * 1e6:.0f})")
    except Exception as e:  # a supervisor still being written: report, don't crash the run
        return Row(name, "-", "-", "-", "-", "report median", f"SKIP: {type(e).__name__}: {e}")
    return Row(name, out[0], out[1], "-", "-", "report median", "info")


BENCHMARKS = ("ping-pong", "ping-pong-timeout", "call", "one-way", "spawn", "ring", "restart")


_RateSpec = tuple[str, int, Callable[[], Any], Callable[..., Any], tuple[int, ...], float | None]


def run_all(sizes: Sizes, only: set[str]) -> list[Row]:
    n_pp, n_ow, n_sp, n_call = sizes.pingpong, sizes.oneway, sizes.spawn, sizes.calls
    m, k = sizes.ring_size, sizes.ring_laps
    # key: (row name, units of work, baseline, numbeam side, its args, target ratio)
    rates: dict[str, _RateSpec] = {
        "ping-pong": (
            f"ping-pong ({n_pp // 1000}k round trips)",
            n_pp, lambda: aio_pingpong(n_pp), nb_pingpong, (n_pp,), 3.0,
        ),
        "call": (
            f"nb.call, local GenServer ({n_call // 1000}k calls)",
            n_call, lambda: aio_calls(n_call), nb_calls, (n_call,), 3.5,
        ),
        "one-way": (
            f"one-way, 1 -> 1 ({n_ow // 1000}k messages)",
            n_ow, lambda: aio_oneway(n_ow), nb_oneway, (n_ow,), 2.0,
        ),
        "spawn": (
            f"spawn {n_sp // 1000}k idle (until parked)",
            n_sp, lambda: aio_spawn(n_sp), nb_spawn, (n_sp,), 0.7,
        ),
        "ring": (
            f"ring of {m} x {k} laps (hops)",
            m * k, lambda: aio_ring(m, k), nb_ring, (m, k), None,
        ),
    }  # fmt: skip
    rows: list[Row] = []
    for key, (name, work, baseline, numbeam, args, target) in rates.items():
        if key in only:
            rows.append(rate_row(name, work, sizes.repeats, baseline, numbeam, args, target))
            if key == "call":
                rows.append(erlang_call_row(name))
            if key == "spawn":
                rows.extend(memory_rows(n_sp))
        if key == "ping-pong" and "ping-pong-timeout" in only:
            rows.append(timeout_row(n_pp, sizes.repeats))
    if "restart" in only:
        rows.append(restart_row(sizes.restarts))
    return rows


def print_table(rows: list[Row]) -> None:
    _report.print_table(
        (
            "benchmark",
            "numbeam (nb.run)",
            "numbeam, asyncio loop",
            "asyncio baseline",
            "ratio",
            "target",
            "result",
        ),
        [dataclasses.astuple(r) for r in rows],
    )


def loop_names() -> tuple[str, str]:
    async def name() -> str:
        loop = asyncio.get_running_loop()
        return f"{type(loop).__module__}.{type(loop).__name__}"

    return nb.run(name), asyncio.run(name())


def profile(sizes: Sizes, which: str) -> None:
    """cProfile numbeam's side (under nb.run) of one benchmark, top functions by own time."""
    calls: dict[str, Callable[[], Any]] = {
        "ping-pong": lambda: nb.run(nb_pingpong, sizes.pingpong),
        "ping-pong-timeout": lambda: nb.run(nb_pingpong_timeout, sizes.pingpong),
        "call": lambda: nb.run(nb_calls, sizes.calls),
        "one-way": lambda: nb.run(nb_oneway, sizes.oneway),
        "spawn": lambda: nb.run(nb_spawn, sizes.spawn),
        "ring": lambda: nb.run(nb_ring, sizes.ring_size, sizes.ring_laps),
        "restart": lambda: nb.run(nb_restart, sizes.restarts),
    }
    prof = cProfile.Profile()
    prof.enable()
    calls[which]()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one run each (smoke test)")
    p.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these")
    p.add_argument("--repeats", type=int, help="runs of each side (default 3, quick 1)")
    p.add_argument("--profile", choices=BENCHMARKS, help="cProfile numbeam's side of one")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    p.add_argument(
        "--memory-probe", nargs=3, metavar=("SIDE", "METHOD", "N"), help=argparse.SUPPRESS
    )
    a = p.parse_args(argv)
    if a.memory_probe:
        side, method, n = a.memory_probe
        print(memory_probe(side, method, int(n)))
        return 0
    sizes = QUICK if a.quick else FULL
    if a.repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=a.repeats)
    if a.profile:
        profile(sizes, a.profile)
        return 0
    nb_loop, aio_loop = loop_names()
    print(f"numbeam {nb.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"nb.run loop: {nb_loop}; baseline loop (asyncio.run): {aio_loop}")
    print(f"mode: {'quick' if a.quick else 'full'}, best of {sizes.repeats} run(s) per side\n")
    t0 = perf_counter()
    rows = run_all(sizes, set(a.only or BENCHMARKS))
    print_table(rows)
    if a.only is None:
        # What telemetry costs (bench/telemetry.py's rows): ping-pong and spawn/exit with a
        # handler detached again and with one attached to process spawn and exit, over plain.
        import telemetry

        n_pp, n_spawn, repeats = (10_000, 5_000, 1) if a.quick else (100_000, 50_000, 6)
        print()
        _report.print_table(
            ["telemetry", "plain", "this side", "ratio", "result"],
            nb.run(telemetry.main, n_pp, n_spawn, repeats),
        )
    print(f"\n({perf_counter() - t0:.1f} s)")
    if a.strict and any(r.result == "FAIL" for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
