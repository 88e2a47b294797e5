"""Tensor benchmarks (issue 4): hand-off latency of big tensors, allocation of small ones.

A. **Hand-off.** A 1 MB, 100 MB and 1 GB f32 tensor (10**6, 10**8, 10**9 bytes) is handed to a
   process in the same node and to a process on another node of this host (node B, ``python -m
   numbeam node`` in another OS process, as in `bench/transport.py`); the receiver reads one
   element and replies with it, and the time is the round trip, send to reply. Each repetition
   hands off a fresh tensor, built (every page written) before the clock starts; the median is
   reported. Building a big tensor streams it through the CPU caches and evicts everything
   else, so the hand-off right after it starts with cold code and data (and the larger the
   tensor, the colder): that is the "cold" column (information). The judged figures hand off
   a small, separate tensor to the same receiver just before the timed one (untimed), which
   warms the code path but not the timed tensor: its mapping, its page tables and its first
   element are as fresh as in the cold case. Baselines in the same run, on a numpy array of
   the same size: ``a.copy()``, and pickling the array through a `multiprocessing.Queue` to
   another process that reads one element and replies on a second queue (put to reply, the
   child started beforehand).
B. **Allocation.** 100k tensors of 1 KiB (256 f32) made with ``nb.tensor(src)`` and kept in a
   list, against ``a = np.empty(256, np.float32); a[...] = src`` kept the same way; best of 3
   interleaved rounds, the garbage collector on (default settings) for both. For information,
   the same with each object dropped at once.

    python bench/tensors.py             # full sizes (about 40 s on 2 cores; peak memory ~5 GB)
    python bench/tensors.py --quick     # 1 MB and 16 MB, 10k allocations: a smoke run
    python bench/tensors.py --only A    # hand-off only (B: allocation only)
    python bench/tensors.py --strict    # exit 1 if a target is missed

Node B and the queue's child run on another CPU than this process when there are two
(``--cpus split``, the default; ``same`` puts everything on one CPU, ``any`` pins nothing).
Both are stopped whatever happens (on Linux even if this process is SIGKILLed).

This file is also the module node B imports (``tensors:reader``, with ``--path bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import gc
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _report
import numpy as np
from _report import rate

import numbeam as nb
from transport import (  # bench/transport.py (first on sys.path)
    Child,
    Placement,
    _node_ready,
    _pin_self,
    placement,
)

perf_counter = time.perf_counter

HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem  # the name node B imports this file by (it runs with --path HERE)
LIMIT = 120.0  # seconds: a bound on every wait, so a dead peer fails the run instead of hanging
MB = 10**6
FILL = 1.5  # every element's value; the receivers reply with the one they read
SMALL = 256  # elements of a small tensor: 1 KiB of f32

# ---- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Size:
    """One tensor size of benchmark A and how many times each measurement is repeated."""

    nbytes: int
    handoffs: int  # fresh tensors handed off (to each receiver); the median is reported
    copies: int  # numpy copies
    queued: int  # trips through the multiprocessing.Queue

    @property
    def label(self) -> str:
        return f"{self.nbytes // 10**9} GB" if self.nbytes >= 10**9 else f"{self.nbytes // MB} MB"


@dataclass(frozen=True, slots=True)
class Sizes:
    handoff: tuple[Size, ...]
    allocs: int  # small tensors per allocation round
    rounds: int  # allocation rounds per side; the best is kept


FULL = Sizes(
    handoff=(
        Size(1 * MB, handoffs=31, copies=31, queued=11),
        Size(100 * MB, handoffs=15, copies=15, queued=5),
        Size(1000 * MB, handoffs=7, copies=7, queued=1),  # 1 GB through a Queue takes seconds
    ),
    allocs=100_000,
    rounds=3,
)
QUICK = Sizes(
    handoff=(
        Size(1 * MB, handoffs=5, copies=5, queued=3),
        Size(16 * MB, handoffs=5, copies=5, queued=3),
    ),
    allocs=10_000,
    rounds=1,
)

# The targets of issue 4, for the sizes it names.
FLAT = 2.0  # the 1 GB hand-off within 2x of the 1 MB one
COPY_X = 100.0  # at 1 GB, at least 100x faster than a numpy copy
QUEUE_X = 1000.0  # ... and 1000x faster than a multiprocessing.Queue
ALLOC_X = 0.5  # small-tensor allocations: at least 0.5x numpy.empty plus a copy
SMALLEST, LARGEST = 1 * MB, 1000 * MB

# ---- the receivers: node B's (spawned there by module path) and this node's ------------------


async def reader(peer: nb.Pid) -> None:
    """For each tensor received, read its first element and send it to `peer`, until None.

    The tensor is dropped before the reply, so the sender may free it when the reply arrives.
    A ``("check", t)`` message is answered with how ``t`` arrived instead.
    """
    receive, send = nb.receive, nb.send
    send(peer, ("ready", nb.self()))
    while True:
        msg = await receive()
        if msg is None:
            return
        if msg.__class__ is str:  # a ping: warms the message path up, untimed
            send(peer, msg)
            continue
        if msg.__class__ is tuple:  # ("check", t): how did it cross?
            t = msg[1]
            send(peer, (type(t).__name__, getattr(t, "shared", None), nb.tensors.stats()))
            del t, msg
            continue
        first = float(msg.numpy()[0])
        del msg
        send(peer, first)


# ---- benchmark A: hand-off, numbeam's side (this process is node A, under nb.run) -------------


def _build(nbytes: int) -> nb.Tensor:
    """A fresh f32 tensor of `nbytes`, every page written (so nothing is mapped lazily)."""
    return nb.tensors.build((nbytes // 4,), "f32", lambda out: out.fill(FILL))


async def _handoff(peer: nb.Pid, t: nb.Tensor) -> float:
    """Seconds from sending `t` to `peer` until its reply (the element it read) is here."""
    receive, send = nb.receive, nb.send
    t0 = perf_counter()
    send(peer, t)
    first = await receive(timeout=LIMIT)
    elapsed = perf_counter() - t0
    if first != FILL:
        raise RuntimeError(f"the receiver answered {first!r} instead of {FILL}")
    return elapsed


async def _ping(peer: nb.Pid) -> None:
    nb.send(peer, "ping")
    if await nb.receive(timeout=LIMIT) != "ping":
        raise RuntimeError("the receiver did not answer the ping")


async def nb_handoffs(b_node: str, size: Size) -> tuple[list[float], ...]:
    """Hand fresh tensors of `size` to a process of this node and to one on node B; the
    round-trip times: (same node, other node, same node cold, other node cold)."""
    async with asyncio.timeout(LIMIT):
        if not await nb.connect(b_node):
            raise RuntimeError(f"cannot connect to node {b_node} (from {nb.node()})")
    local = nb.spawn(reader, nb.self())
    nb.spawn(f"{MODULE}:reader", nb.self(), node=b_node)
    ready = [await nb.receive(timeout=LIMIT) for _ in range(2)]
    if any(tag != "ready" for tag, _ in ready):
        raise RuntimeError(f"the readers answered {ready!r}")
    remote = next(pid for _, pid in ready if pid != local)
    # Warm up both paths (node B's descriptor channel, first imports), and check the way a
    # tensor crosses to node B: a handle, mapped there, not a copy of its bytes.
    warm = _build(SMALLEST)
    for peer in (local, remote):
        await _handoff(peer, warm)
    nb.send(remote, ("check", warm))
    kind, shared, b_stats = await nb.receive(timeout=LIMIT)
    if kind != "Tensor" or not shared or b_stats["mapped"] < 1 or b_stats["bytes"] != 0:
        raise RuntimeError(f"node B did not map the tensor: {kind}, shared={shared}, {b_stats}")
    same, other, cold_same, cold_other = [], [], [], []
    for _ in range(size.handoffs):
        # Cold: right after the tensor was built, which evicted the CPU caches (a 1 GB build
        # streams through them), with only a one-word ping to the receiver in between, so the
        # code and data of the hand-off path start cold.
        for peer, times in ((local, cold_same), (remote, cold_other)):
            gc.collect()
            t = _build(size.nbytes)
            await _ping(peer)
            times.append(await _handoff(peer, t))
            del t  # node B dropped it before replying: its bytes are freed here and now
        # Warm: the same with a hand-off of the small `warm` tensor just before (untimed).
        gc.collect()
        t = _build(size.nbytes)
        for peer, times in ((local, same), (remote, other)):
            await _handoff(peer, warm)
            times.append(await _handoff(peer, t))
        del t
    for peer in (local, remote):
        nb.send(peer, None)
    return same, other, cold_same, cold_other


# ---- benchmark A: the baselines ----------------------------------------------------------------


def numpy_copies(a: np.ndarray, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = perf_counter()
        b = a.copy()
        times.append(perf_counter() - t0)
        del b
    return times


def _queue_child(inbox: Any, outbox: Any, cpus: frozenset[int] | None) -> None:
    """The queue baseline's other process: for each array, reply with its first element."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the benchmark
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    outbox.put("ready")
    while True:
        a = inbox.get()
        if a is None:
            return
        first = float(a[0])
        del a
        outbox.put(first)


class QueuePeer:
    """A process at the end of a `multiprocessing.Queue` (the 'spawn' start method: a fresh
    interpreter, no inherited threads or sockets), stopped by `close` whatever its state."""

    def __init__(self, cpus: frozenset[int] | None) -> None:
        ctx = mp.get_context("spawn")
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(
            target=_queue_child, args=(self.inbox, self.outbox, cpus), daemon=True
        )
        self.proc.start()

    def ready(self) -> None:
        got = self.outbox.get(timeout=LIMIT)
        if got != "ready":
            raise RuntimeError(f"the queue's child answered {got!r}")

    def trips(self, a: np.ndarray, n: int) -> list[float]:
        """Seconds from putting `a` until the child's reply is here, `n` times."""
        times = []
        for _ in range(n):
            t0 = perf_counter()
            self.inbox.put(a)
            first = self.outbox.get(timeout=LIMIT)
            times.append(perf_counter() - t0)
            if first != FILL:
                raise RuntimeError(f"the queue's child answered {first!r} instead of {FILL}")
        return times

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.inbox.put(None)
            except (OSError, ValueError):
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        for q in (self.inbox, self.outbox):
            q.close()
            q.cancel_join_thread()  # an array left in the pipe must not block our exit


# ---- benchmark A: running it ------------------------------------------------------------------


@dataclass
class Latencies:
    """Medians, in seconds, for one size."""

    size: Size
    same: float
    other: float
    copy: float
    queue: float
    cold_same: float  # the hand-offs right after building the tensor
    cold_other: float


def run_handoff(sizes: Sizes, pl: Placement) -> list[Latencies]:
    cookie = secrets.token_hex(16)
    env = dict(os.environ, NUMBEAM_COOKIE=cookie, PYTHONUNBUFFERED="1")
    env.pop("NUMBEAM_COOKIE_FILE", None)
    tmp = Path(tempfile.mkdtemp(prefix="nb-bench-tensors-"))
    log = tmp / "node-b.log"
    argv = [sys.executable, "-m", "numbeam", "node", "--name", "b@127.0.0.1:0"]
    argv += ["--path", str(HERE)]
    node_b: Child | None = None
    peer: QueuePeer | None = None
    out = []
    try:
        node_b = Child("node b", argv, log, env, pl.b)
        peer = QueuePeer(pl.b)
        b_node = node_b.ready(_node_ready)
        peer.ready()
        for size in sizes.handoff:
            # A fresh node A per size, as a program would be; node B and the child stay.
            same, other, cold_same, cold_other = nb.run(
                nb_handoffs, b_node, size, node="a@127.0.0.1:0", cookie=cookie
            )
            gc.collect()
            a = np.full(size.nbytes // 4, FILL, np.float32)
            copy = numpy_copies(a, size.copies)
            queue = peer.trips(a, size.queued)
            del a
            gc.collect()
            med = statistics.median
            out.append(
                Latencies(
                    size,
                    med(same),
                    med(other),
                    med(copy),
                    med(queue),
                    med(cold_same),
                    med(cold_other),
                )
            )
    except Exception:
        if node_b is not None:
            print(f"node b's log:\n{node_b.stderr()}", file=sys.stderr)
        raise
    finally:
        if peer is not None:
            peer.close()
        if node_b is not None:
            try:
                node_b.stop()
            except Exception as e:
                print(f"could not stop node b: {e}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def handoff_tables(lat: list[Latencies]) -> list[str]:
    """Print the latencies and the ratios; the results (PASS / FAIL / info) of the ratios."""
    _report.print_table(
        (
            "hand-off (median)",
            "same node",
            "other node, same host",
            "numpy copy",
            "mp.Queue",
            "cold: same node",
            "cold: other node",
        ),
        [
            (
                f"{x.size.label} f32",
                _time(x.same),
                _time(x.other),
                _time(x.copy),
                _time(x.queue),
                _time(x.cold_same),
                _time(x.cold_other),
            )
            for x in lat
        ],
    )
    print()
    small, big = lat[0], lat[-1]
    rows = []
    judged = small.size.nbytes == SMALLEST and big.size.nbytes == LARGEST
    for where, attr in (("same node", "same"), ("other node", "other")):
        ratio = getattr(big, attr) / getattr(small, attr)
        rows.append(
            (
                f"flat, {where}: hand-off {big.size.label} / {small.size.label}",
                _x(ratio),
                f"<= {FLAT:g}x",
                ("PASS" if ratio <= FLAT else "FAIL") if judged else "info",
            )
        )
    for where, attr in (("same node", "cold_same"), ("other node", "cold_other")):
        ratio = getattr(big, attr) / getattr(small, attr)
        rows.append(
            (
                f"flat, {where}, cold: hand-off {big.size.label} / {small.size.label}",
                _x(ratio),
                "-",
                "info",
            )
        )
    for where, attr in (("same node", "same"), ("other node", "other")):
        h = getattr(big, attr)
        judged = big.size.nbytes == LARGEST
        for base, value, target in (
            ("numpy copy", big.copy, COPY_X),
            ("mp.Queue", big.queue, QUEUE_X),
        ):
            ratio = value / h
            rows.append(
                (
                    f"{big.size.label}, {where}: {base} / hand-off",
                    _x(ratio),
                    f">= {target:g}x",
                    ("PASS" if ratio >= target else "FAIL") if judged else "info",
                )
            )
    _report.print_table(("ratio", "value", "target", "result"), rows)
    return [r[-1] for r in rows]


# ---- benchmark B: allocation of small tensors --------------------------------------------------


def nb_alloc(src: np.ndarray, n: int, keep: bool) -> float:
    tensor = nb.tensor
    if keep:
        kept: list[Any] = []
        append = kept.append
        t0 = perf_counter()
        for _ in range(n):
            append(tensor(src))
        elapsed = perf_counter() - t0
        del kept
        return elapsed
    t0 = perf_counter()
    for _ in range(n):
        tensor(src)
    return perf_counter() - t0


def np_alloc(src: np.ndarray, n: int, keep: bool) -> float:
    empty, f32 = np.empty, np.float32
    if keep:
        kept: list[Any] = []
        append = kept.append
        t0 = perf_counter()
        for _ in range(n):
            a = empty(SMALL, f32)
            a[...] = src
            append(a)
        elapsed = perf_counter() - t0
        del kept
        return elapsed
    t0 = perf_counter()
    for _ in range(n):
        a = empty(SMALL, f32)
        a[...] = src
    return perf_counter() - t0


async def _alloc_rounds(n: int, rounds: int, keep: bool) -> tuple[float, float]:
    """Best time of each side over `rounds` interleaved rounds (numpy first), inside a node
    (as programs make tensors: the node applies its tensor options)."""
    src = np.arange(SMALL, dtype=np.float32)
    if not nb.tensor(src).shared:
        raise RuntimeError("a 1 KiB tensor did not go to shared memory")
    best_np = best_nb = float("inf")
    for _ in range(rounds):
        gc.collect()
        best_np = min(best_np, np_alloc(src, n, keep))
        gc.collect()
        best_nb = min(best_nb, nb_alloc(src, n, keep))
    return best_nb, best_np


def run_alloc(sizes: Sizes) -> list[tuple[str, ...]]:
    rows = []
    n = sizes.allocs
    for keep in (True, False):
        t_nb, t_np = nb.run(_alloc_rounds, n, sizes.rounds, keep)
        ratio = t_np / t_nb
        how = "kept in a list" if keep else "each dropped at once"
        if keep:
            target, result = f">= {ALLOC_X:g}x", "PASS" if ratio >= ALLOC_X else "FAIL"
        else:
            target, result = "-", "info"
        rows.append(
            (
                f"alloc {n // 1000}k x 1 KiB f32, {how}",
                rate(n / t_nb),
                rate(n / t_np),
                _x(ratio),
                target,
                result,
            )
        )
    _report.print_table(
        ("allocation (best)", "nb.tensor(src)", "np.empty + copy", "ratio", "target", "result"),
        rows,
    )
    return [r[-1] for r in rows]


# ---- main -------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _describe(pl: Placement) -> str:
    if pl.a is None:
        return f"{pl.name} (not pinned)"
    a, b = ",".join(map(str, sorted(pl.a))), ",".join(map(str, sorted(pl.b or ())))
    return f"{pl.name} (this process, node A, on CPU {a}; node B and the queue's child on {b})"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--only", choices=("A", "B"), help="A: hand-off only; B: allocation only")
    p.add_argument(
        "--cpus",
        choices=("split", "same", "any"),
        help="where node B and the queue's child run: on another CPU than this process "
        "(split, the default with 2 CPUs or more), on the same one (same), anywhere (any)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    a = p.parse_args(argv)
    # A plain kill (or a test's timeout) still stops the subprocesses: see the finally blocks.
    signal.signal(signal.SIGTERM, _terminate)
    sizes = QUICK if a.quick else FULL
    where = a.cpus
    if where is None:
        can_pin = sys.platform == "linux" and len(os.sched_getaffinity(0)) >= 2
        where = "split" if can_pin else "any"
    pl = placement(where)
    if isinstance(pl, str):
        p.error(f"cannot use --cpus {where}: {pl}")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"numbeam {nb.__version__}, Python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs ({_cpu_model()}), {platform.system()} {platform.release()}"
    )
    print(f"date: {now}; mode: {'quick' if a.quick else 'full'}; CPUs: {_describe(pl)}")
    print(
        "A: round trip send -> receiver read one element -> reply; the median over fresh tensors "
        "(numbeam), copies, or queue trips;\n   cold: the hand-off right after building the "
        "tensor (a one-word ping in between), without the warm-up hand-off of a small one"
    )
    print()
    t0 = perf_counter()
    results: list[str] = []
    everywhere = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        if a.only in (None, "A"):
            if pl.a is not None:
                _pin_self(pl.a)
            results += handoff_tables(run_handoff(sizes, pl))
            print()
        if a.only in (None, "B"):
            results += run_alloc(sizes)
    finally:
        if everywhere is not None:
            _pin_self(everywhere)
    print(f"\n({perf_counter() - t0:.1f} s)")
    if a.strict and "FAIL" in results:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
