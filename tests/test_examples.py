"""The examples and the README's code run as written.

Each example is run as a subprocess with this interpreter, the way a newcomer runs it, and its
output is checked for the lines that show what it is about. Every ```python block of README.md
is a complete program and runs the same way, so the documentation cannot drift from the code.
The Quick start and `.ci/run` are checked to run the same test command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
PID = r"<0\.\d+\.\d+>"


def run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_ok(args: list[str]) -> str:
    proc = run(args)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_ping_pong_example_shows_messages_selective_receive_and_monitor() -> None:
    out = run_ok([str(EXAMPLES / "ping_pong.py")])
    for n in (1, 2, 3):
        assert f"main: sent ping {n}, got ('pong', {n})" in out
    assert "selective receive took ('urgent', 'handle me first')" in out
    assert "[('log', 'first'), ('log', 'second')]" in out
    assert re.search(rf"main: pong {PID} is down, reason 'normal'", out)


def test_bank_example_serves_calls_and_casts_by_name() -> None:
    out = run_ok([str(EXAMPLES / "bank.py")])
    assert "transfer alice -> bob: 30" in out
    assert "refused, bob has only 80" in out
    assert "balance of alice: 150" in out
    assert "balance of bob: 0" in out
    assert "audit log has 3 entries" in out
    assert "no account for carol" in out
    assert "account bob closes with 0 ('normal')" in out


def test_supervised_pool_example_restarts_crashed_workers_and_finishes_the_work() -> None:
    out = run_ok([str(EXAMPLES / "supervised_pool.py")])
    # the crash report, with its traceback
    assert len(re.findall(rf"ERROR +numbeam: process {PID} .*crashed: ValueError", out)) == 3
    assert "Traceback (most recent call last):" in out
    assert "ValueError: job 4: corrupt input batch" in out
    # the supervisor's restarts: a new pid each time
    restarts = re.findall(rf"supervisor restarted (worker\d): ({PID}) -> ({PID})", out)
    assert len(restarts) == 3
    assert all(old != new for _, old, new in restarts)
    for _, _, new in restarts:
        assert re.search(rf"worker\d is up as {re.escape(new)}", out)
    # the work completes
    assert re.search(
        r"all 12 jobs done: pi ~ 3\.1\d+ from 2,400,000 samples; 3 crashes, 3 restarts", out
    )


def test_cluster_example_reruns_the_jobs_of_a_killed_node_and_leaves_no_process() -> None:
    proc = run([str(EXAMPLES / "cluster.py")], timeout=50.0)
    out = proc.stdout
    assert proc.returncode == 0, f"exited {proc.returncode}:\n{out}\n{proc.stderr}"
    up = re.search(
        r"worker nodes up: (w1@127\.0\.0\.1:\d+) \(OS pid (\d+)\), "
        r"(w2@127\.0\.0\.1:\d+) \(OS pid (\d+)\)",
        out,
    )
    assert up, out
    names = {"w1": up[1], "w2": up[3]}
    # The kill: the node that just got a job, so that job at least is lost with it.
    kill = re.search(r"3 results in: (w[12]) gets job (\d+), and right behind it a SIGKILL", out)
    assert kill, out
    victim, survivor = kill[1], ({"w1", "w2"} - {kill[1]}).pop()
    lost = re.findall(
        rf"job (\d+) lost with {victim} \(Down noconnection\): back in the queue", out
    )
    assert kill[2] in lost
    assert re.search(rf"NodeDown: {re.escape(names[victim])} \(\w+\)", out)
    # Every job computed once, the lost ones by the survivor, and checked against numpy here.
    done = re.findall(
        r"^INFO +cluster: job (\d+): percentiles .* computed on (w[12])(.*)$", out, re.M
    )
    assert sorted(int(job) for job, _, _ in done) == list(range(1, 9))
    for job, node, note in done:
        assert (note == " (re-dispatched)") == (job in lost)
        assert node == survivor if job in lost else node in names
    summary = f"all 8 jobs done and equal to the local computation: {len(lost)} re-dispatched "
    assert summary + f"after {victim} died, none lost" in out
    # Both worker nodes were reaped (the killed one and the one stopped at the end).
    for pid in (int(up[2]), int(up[4])):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_tensors_example_hands_a_tensor_to_a_process_and_a_node_without_copying() -> None:
    # (POSIX semaphores, "sem.*", are multiprocessing's, from whatever else runs meanwhile)
    shm_before = {n for n in os.listdir("/dev/shm") if not n.startswith("sem.")}
    out = run_ok([str(EXAMPLES / "tensors.py")])
    assert "made f32[4096, 4096]: 64 MiB in shared memory" in out
    assert "same node: the receiver got the same object: True" in out
    other = re.search(
        r"other node: mapped (\d+) MiB, .*\(inode (\d+) == (\d+): True\), read-only \(r--s\)", out
    )
    assert other and int(other[1]) >= 64 and other[2] == other[3], out
    assert "column means came back as f32[4096], correct: True" in out
    assert "dropped: this node holds 0 MiB of shared memory (was 64 MiB)" in out
    shm_after = {n for n in os.listdir("/dev/shm") if not n.startswith("sem.")}
    assert shm_after <= shm_before  # nothing of numbeam's left behind


def test_devices_example_pins_layers_and_survives_a_killed_worker() -> None:
    proc = run([str(EXAMPLES / "devices.py")], timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr}"
    assert re.search(r"running on (CUDA|fake devices \(no CUDA here\)): ", out)
    assert re.search(r"batch 3: killed the worker of \S+ \(os pid (\d+)\)", out)
    assert "batch 3: stage lost (noconnection); the supervisor restarts it" in out
    pids = re.findall(r"batch (\d): \S+ \(os pid (\d+)\) -> ", out)
    assert [b for b, _ in pids] == [str(i) for i in range(8)]
    assert len({p for b, p in pids if int(b) < 3}) == 1
    assert {p for b, p in pids if int(b) < 3}.isdisjoint({p for b, p in pids if int(b) >= 3})
    assert out.count("matches numpy: True") == 8
    assert re.search(r"worker restarts: \S+: 1, ", out)
    assert "all 8 batches correct" in out


def test_serving_example_batches_1000_clients_and_shows_the_failure_paths() -> None:
    out = run_ok([str(EXAMPLES / "serving.py")])
    assert "1000 clients answered in" in out and "1000 rows correct" in out
    sizes = re.findall(r"batch size +(\d+): +(\d+) #+", out)
    assert sizes and max(int(s) for s, _ in sizes) <= 64
    assert sum(int(s) * int(c) for s, c in sizes) == 1000
    assert re.search(r"client latency: p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms", out)
    assert "good input: a row of 10 scores" in out
    assert "bad input: ValueError: nb.serving: the input is array float32[3]" in out
    assert "too many at once: nb.Overloaded:" in out


def test_pipeline_example_retries_failures_redoes_a_killed_processor_and_loses_nothing() -> None:
    out = run_ok([str(EXAMPLES / "pipeline.py")])
    assert "reading 200 chunks from an in-memory source" in out
    assert re.search(rf"\d+ chunks done: killed processor {PID}", out)
    summary = re.search(r"summary: 192 ok, 8 failed, (\d+) retried", out)
    assert summary and int(summary[1]) >= 16, out  # 8 chunks tried 3 times, and the redone
    assert out.count("failed: ValueError('chunk ") == 8
    assert "every chunk acknowledged exactly once: True; none lost: True" in out
    assert "192 peaks written, all at the tone put in: True" in out


def test_cli_prints_version() -> None:
    import numbeam

    out = run_ok(["-m", "numbeam", "--version"])
    assert out.strip() == f"numbeam {numbeam.__version__}"


def test_cli_demo_runs_the_supervised_pool() -> None:
    out = run_ok(["-m", "numbeam", "demo"])
    assert "all 12 jobs done" in out


def readme_blocks(lang: str) -> list[tuple[str, str]]:
    """(title, code) of each fenced block in `lang`, titled by the heading above it."""
    blocks, heading, seen = [], "top", {}
    fence = re.compile(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```$", re.M | re.S)
    for m in fence.finditer(README.read_text()):
        if m.group(1):
            heading = re.sub(r"\W+", "-", m.group(1).lstrip("# ").lower()).strip("-")
        elif m.group(2) == lang:
            seen[heading] = seen.get(heading, 0) + 1
            blocks.append((f"{heading}-{seen[heading]}", m.group(3)))
    return blocks


PYTHON_BLOCKS = readme_blocks("python")


@pytest.mark.parametrize("code", [c for _, c in PYTHON_BLOCKS], ids=[t for t, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    run_ok([str(script)])


def test_readme_has_python_examples_for_each_concept() -> None:
    assert len(PYTHON_BLOCKS) >= 9


def test_quick_start_is_two_commands_and_ci_runs_the_same_tests() -> None:
    [(_, quick_start)] = [b for b in readme_blocks("") if b[0].startswith("quick-start")]
    demo, tests = quick_start.strip().splitlines()
    assert "examples/supervised_pool.py" in demo
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.startswith(tests) for line in ci.splitlines()), ".ci/run must run: " + tests


def test_observer_example_serves_its_page_until_stopped() -> None:
    import signal
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "observer.py"), "--port", "0", "--seconds", "60"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # (the example runs at most 60 s: bounded)
        m = re.match(r"observer: (http://127\.0\.0\.1:\d+/)", line)
        assert m, line
        with urllib.request.urlopen(m.group(1), timeout=30) as r:
            assert r.status == 200 and "numbeam observer" in r.read().decode()
        with urllib.request.urlopen(m.group(1) + "metrics", timeout=30) as r:
            assert 'numbeam_processes{node="nonode@nohost"}' in r.read().decode()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert re.search(r"stopping after \d+ restarts", out)
