"""The benchmarks still run: `bench/actors.py`, `bench/transport.py`, `bench/tensors.py` and
`bench/devices.py` with `--quick` exit 0 and report every benchmark.

Only that it runs and prints its rows: timings vary with the machine and its load, so no
figure is asserted here (the targets are checked by reading the full run, see bench/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "actors.py"
TRANSPORT_BENCH = BENCH.parent / "transport.py"

ROWS = (
    "ping-pong",
    "one-way",
    "spawn 10k idle",
    "memory/process (tracemalloc)",
    "memory/process (rss)",
    "ring of",
    "restart under one_for_one",
    "ping-pong, receive(timeout=10)",
    "nb.call, local GenServer",
    "nb.call vs Erlang gen_server:call",
    "ping-pong (10k), telemetry detached",
    "ping-pong (10k), telemetry attached",
    "spawn/exit (5k), telemetry attached",
)

TRANSPORT_ROWS = tuple(
    (transport, bench)
    for transport in ("tcp ", "ipc ")
    for bench in ("ping-pong", "one-way", "array", "to (name, node)", "cast to a named GenServer")
)


def test_quick_benchmark_runs_and_prints_every_row() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for row in ROWS:
        matching = [line for line in lines if row in line]
        assert matching, f"no {row!r} row in the benchmark output:\n{out.stdout}"
        assert any(r in matching[0] for r in ("PASS", "FAIL", "info", "SKIP")), matching[0]


def run_quick(bench: Path, *args: str) -> str:
    """Run ``bench --quick`` (at most 90 s: the slowest takes about 25 s, more on a loaded
    machine); its stdout, once it has exited 0. On a timeout it gets SIGTERM, so it stops its
    node and other children on the way out."""
    proc = subprocess.Popen(
        [sys.executable, str(bench), "--quick", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
        raise AssertionError(f"{bench.name} --quick took over 90 s:\n{out}{err}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    return out


def test_quick_transport_benchmark_runs_and_prints_every_row() -> None:
    """Node B and the raw servers start as OS processes, every benchmark runs on both transports
    (in one CPU placement: each placement is the same code, and all three took a minute on a
    busy 2-core box), and the run exits 0 (about 12 s)."""
    out = run_quick(TRANSPORT_BENCH, "--cpus", "any")
    lines = out.splitlines()
    for transport, bench in TRANSPORT_ROWS:
        matching = [line for line in lines if line.startswith(transport) and bench in line]
        assert matching, f"no {transport}{bench} row in the benchmark output:\n{out}"
        for line in matching:
            assert any(r in line for r in ("PASS", "FAIL", "SKIP")), line


def test_quick_tensors_benchmark_runs_and_prints_every_row() -> None:
    """Node B and the multiprocessing.Queue's child start as OS processes, the hand-off and
    allocation benchmarks run at small sizes, and the run exits 0 (a few seconds)."""
    bench = BENCH.parent / "tensors.py"
    rows = (
        "1 MB f32",
        "16 MB f32",
        "flat, same node",
        "flat, other node",
        "same node: numpy copy / hand-off",
        "same node: mp.Queue / hand-off",
        "other node: numpy copy / hand-off",
        "other node: mp.Queue / hand-off",
        "kept in a list",
        "each dropped at once",
    )
    out = run_quick(bench)
    lines = out.splitlines()
    for row in rows:
        matching = [line for line in lines if line.startswith(row) or f" {row}" in line]
        assert matching, f"no {row!r} row in the benchmark output:\n{out}"
    for line in lines:
        if "/ hand-off" in line or "flat," in line or "alloc " in line:
            assert any(r in line for r in ("PASS", "FAIL", "info")), line


def test_quick_devices_benchmark_runs_and_prints_every_row() -> None:
    """Fake-device workers start, one is SIGKILLed and its pinned server restarted, tensors of
    1 and 100 MB are handed to a worker, pinned calls run, and the run exits 0."""
    out = run_quick(BENCH.parent / "devices.py")
    for row in (
        "restart after SIGKILL until a pinned call answers",
        "hand-off 1 MB to the device's worker",
        "hand-off 100 MB to the device's worker",
        "hand-off flat in size",
        "call round trips, pinned vs same node",
    ):
        matching = [line for line in out.splitlines() if line.startswith(row)]
        assert matching, f"no {row!r} row in the benchmark output:\n{out}"
        assert any(r in matching[0] for r in ("PASS", "FAIL", "info")), matching[0]


def test_quick_offload_benchmark_runs_and_prints_both_sides() -> None:
    """The batched MLP service runs with nb.offload and with asyncio.to_thread, each in a fresh
    interpreter, and the ratios are printed (a few seconds)."""
    out = run_quick(BENCH.parent / "offload.py")
    for row in ("asyncio.to_thread (default BLAS)", "nb.offload (node defaults)"):
        assert any(line.startswith(row) for line in out.splitlines()), out
    assert "throughput nb.offload / to_thread:" in out and "p99 to_thread / nb.offload:" in out


def test_quick_serving_benchmark_runs_and_prints_every_row() -> None:
    """1,000 requesters become 200 on a small model; the serving, its baseline and its ceiling
    run in one process, and the run exits 0 (about 2 s)."""
    out = run_quick(BENCH.parent / "serving.py")
    for row in (
        "throughput vs predict per request",
        "throughput vs hand-written batching (ceiling)",
        "p99 latency at half load",
        "batches of 200 concurrent requests",
    ):
        matching = [line for line in out.splitlines() if line.startswith(row)]
        assert matching, f"no {row!r} row in the benchmark output:\n{out}"
        assert any(r in matching[0] for r in ("PASS", "FAIL", "info")), matching[0]


def test_quick_telemetry_benchmark_runs_and_prints_every_row() -> None:
    """Ping-pong and spawn/exit with telemetry detached and attached, as ratios to plain."""
    out = run_quick(BENCH.parent / "telemetry.py")
    for work in ("ping-pong", "spawn/exit"):
        for side in ("detached", "attached"):
            row = f"telemetry {side}"
            matching = [line for line in out.splitlines() if line.startswith(work) and row in line]
            assert matching, f"no {work} {row} row in the benchmark output:\n{out}"
            assert matching[0].rstrip().endswith("info"), matching[0]


def test_quick_pipeline_benchmark_runs_and_prints_every_row() -> None:
    """nb.Pipeline against an asyncio.Queue worker pool (20k items) and, with a redis-server on
    the PATH, against a bare XREADGROUP/XACK loop (5k entries); the run exits 0 (~3 s)."""
    out = run_quick(BENCH.parent / "pipeline.py")
    for row in ("in memory", "redis stream"):
        matching = [line for line in out.splitlines() if line.startswith(row)]
        assert matching, f"no {row!r} row in the benchmark output:\n{out}"
        assert any(r in matching[0] for r in ("PASS", "FAIL", "SKIP")), matching[0]
