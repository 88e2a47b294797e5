"""A cluster of three nodes: a coordinator spreads numpy jobs over two workers, one of which dies.

Each node is its own OS process. This program starts two worker nodes, ``python -m numbeam
node --name wN@127.0.0.1:0 --path examples`` (port 0: each picks a free port and prints its
real name), with a random cookie made here and passed in ``NUMBEAM_COOKIE``, then becomes the
third node, the coordinator. Each job is a process the coordinator spawns on a worker node
with `spawn_monitor`, by module path (`cluster_worker.chunk_stats`, importable there thanks to
``--path``): its argument, a matrix chunk, crosses as a numpy array, and it sends back the
chunk's 1st, 50th and 99th percentiles. Each node runs two jobs at a time.

Once three results are in, the next worker node handed a job gets, right behind it, a process
that kills its own node with SIGKILL, as a crash would, in the middle of its jobs. Nothing there
gets to say goodbye: the monitors of its unfinished jobs deliver ``Down(..., "noconnection")``
and `monitor_node` a `NodeDown`. The coordinator puts those jobs back in the queue and the other
node runs them. At the end every result is checked against the same computation done locally.

Run it:  python examples/cluster.py
On several machines, start the workers with ``numbeam node`` there and name them:
python examples/cluster.py --node coordinator@HOST:PORT --listen 0.0.0.0 w1@... w2@...
(the README's "Nodes" section says how).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import select
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import IO, Any

import cluster_worker
import numpy as np

import numbeam as nb

HERE = Path(__file__).resolve().parent
JOBS = 8
SIZE = 1000  # each chunk is a SIZE x SIZE float64 matrix
PER_NODE = 2  # jobs running at a time on each worker node
KILL_AFTER = 3  # results in before a worker node is killed
TIMEOUT = 20.0  # bound on every wait; a healthy run takes milliseconds per step

log = logging.getLogger("cluster")


def short(node: str) -> str:
    return node.partition("@")[0]


async def main(workers: list[str]) -> None:
    me = nb.self()
    for name in workers:
        if not await asyncio.wait_for(nb.connect(name), TIMEOUT):
            raise RuntimeError(f"cannot connect to {name}: is it up, with the same cookie?")
        nb.monitor_node(name)  # a NodeDown message if the connection is lost
    log.info(
        "%s connected to %s: %d jobs on %dx%d chunks, %d at a time per node",
        nb.node(),
        ", ".join(map(short, workers)),
        JOBS,
        SIZE,
        SIZE,
        PER_NODE,
    )

    rng = np.random.default_rng(2024)
    chunks = {job: rng.standard_normal((SIZE, SIZE)) for job in range(1, JOBS + 1)}
    queue = deque(chunks)
    up = list(workers)  # the nodes jobs still go to
    victim: str | None = None  # the node killed mid-run
    running: dict[nb.Ref, tuple[int, nb.Pid]] = {}  # monitor ref -> (job, its process)
    results: dict[int, tuple[list[float], str]] = {}  # job -> (percentiles, node that did it)
    lost: list[int] = []
    while len(results) < JOBS:
        for node in up:
            while queue and sum(p.node == node for _, p in running.values()) < PER_NODE:
                job = queue.popleft()
                pid, ref = nb.spawn_monitor(
                    cluster_worker.chunk_stats, me, job, chunks[job], node=node
                )
                running[ref] = (job, pid)
                if victim is None and len(results) >= KILL_AFTER:
                    # Chaos: the node that just got a job is killed before it can finish it,
                    # by a process that kills its own node (spawned after the job, so it runs
                    # after the job has started: messages to a node arrive in order).
                    nb.spawn(cluster_worker.kill_node, node=node)
                    victim = node
                    log.info(
                        "%d results in: %s gets job %d, and right behind it a SIGKILL",
                        len(results),
                        short(node),
                        job,
                    )
        if queue and not up:
            raise RuntimeError("every worker node is down")
        match await nb.receive(timeout=TIMEOUT):
            case ("result", job, value, pid):
                ref = next(r for r, (_, p) in running.items() if p == pid)
                del running[ref]
                nb.demonitor(ref, flush=True)  # its Down("normal") is of no interest
                results[job] = (value, pid.node)
            case nb.Down(ref=ref, reason="noconnection") if ref in running:
                job, pid = running.pop(ref)
                lost.append(job)
                queue.appendleft(job)
                if pid.node in up:
                    up.remove(pid.node)  # no connection: send it nothing more
                log.info(
                    "job %d lost with %s (Down noconnection): back in the queue",
                    job,
                    short(pid.node),
                )
            case nb.Down(ref=ref, reason=reason) if ref in running:
                job, pid = running.pop(ref)
                raise RuntimeError(f"job {job} failed on {pid.node}: {reason!r}")
            case nb.NodeDown(name=name, reason=reason):
                if name in up:
                    up.remove(name)
                log.info("NodeDown: %s (%s)", name, reason)
            case other:
                raise RuntimeError(f"unexpected message {other!r}")

    for job, (value, node) in sorted(results.items()):
        expected = cluster_worker.percentiles(chunks[job])
        if not np.allclose(value, expected, rtol=1e-12, atol=0):
            raise RuntimeError(f"job {job}: {value} from {node}, but {expected} here")
        redo = " (re-dispatched)" if job in lost else ""
        low, median, high = value
        log.info(
            "job %d: percentiles 1/50/99 %+.3f %+.3f %+.3f, computed on %s%s",
            job,
            low,
            median,
            high,
            short(node),
            redo,
        )
    assert victim is not None  # there are jobs left to hand out after KILL_AFTER results
    log.info(
        "all %d jobs done and equal to the local computation: %d re-dispatched after %s died, "
        "none lost",
        JOBS,
        len(lost),
        short(victim),
    )


def start_node(name: str, env: dict[str, str], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    """``numbeam node --name name``, able to import this folder's modules."""
    command = ["-m", "numbeam", "node", "--name", name, "--path", str(HERE)]
    return subprocess.Popen(
        [sys.executable, *command], stdout=subprocess.PIPE, stderr=stderr, env=env
    )


def wait_ready(proc: subprocess.Popen[bytes], stderr: IO[bytes], timeout: float) -> str:
    """Read the node's ``numbeam node NAME ready`` line (its only stdout); return NAME."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout)[0]:
        raise TimeoutError(f"a worker node printed no ready line within {timeout} s")
    words = proc.stdout.readline().decode().split()
    if words[:2] == ["numbeam", "node"] and words[3:] == ["ready"]:
        return words[2]
    stderr.seek(0)
    raise RuntimeError(
        f"a worker node exited with status {proc.wait(timeout)} before it was ready:\n"
        + stderr.read().decode(errors="replace")
    )


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a node stops cleanly), SIGKILL if it is still there after TIMEOUT; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_local_cluster(options: dict[str, Any]) -> None:
    """Start two worker nodes, run the coordinator, and stop the workers whatever happens."""
    env = {**os.environ, "NUMBEAM_COOKIE": secrets.token_urlsafe(32)}
    procs: list[subprocess.Popen[bytes]] = []
    # The workers' logs go to files, shown if they fail to start, so the output stays short.
    with tempfile.TemporaryFile() as log1, tempfile.TemporaryFile() as log2:
        try:
            for i, stderr in enumerate((log1, log2), 1):
                procs.append(start_node(f"w{i}@127.0.0.1:0", env, stderr))
            workers = [wait_ready(procs[0], log1, TIMEOUT), wait_ready(procs[1], log2, TIMEOUT)]
            log.info(
                "worker nodes up: %s (OS pid %d), %s (OS pid %d)",
                workers[0],
                procs[0].pid,
                workers[1],
                procs[1].pid,
            )
            nb.run(main, workers, cookie=env["NUMBEAM_COOKIE"], **options)
        finally:
            for proc in procs:
                stop_node(proc)
                assert proc.stdout is not None
                proc.stdout.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "workers",
        nargs="*",
        metavar="WORKER",
        help="running worker nodes to use (at least two: one is killed); default: start two here",
    )
    parser.add_argument(
        "--node", default="coordinator@127.0.0.1:0", help="the coordinator's node name"
    )
    parser.add_argument("--listen", help="host the coordinator binds, e.g. 0.0.0.0")
    args = parser.parse_args()
    if len(args.workers) == 1:
        parser.error("give at least two worker nodes: one of them is killed")
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s", stream=sys.stdout
    )
    # numbeam logs each connection made and lost at INFO; this program tells that story itself.
    logging.getLogger("numbeam.transport").setLevel(logging.WARNING)
    options = {"node": args.node} | ({"listen": args.listen} if args.listen else {})
    if args.workers:
        nb.run(main, args.workers, **options)  # the cookie: NUMBEAM_COOKIE or the cookie file
    else:
        run_local_cluster(options)
