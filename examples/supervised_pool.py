"""A supervised worker pool: workers crash, the supervisor brings them back, the work completes.

Three worker GenServers run under a `one_for_one` Supervisor, each registered under its
child id ("worker0", ...), so its crash report names it. The main process is the
dispatcher: it hands each idle worker a job (estimate pi from random points with numpy, in a
thread so the event loop stays free), and monitors the worker while the job runs. Some input
batches are corrupt and make the worker raise. Nobody catches that: the worker crashes, numbeam
logs a crash report, the supervisor restarts that worker alone, and the dispatcher, told by its
monitor, puts the job back in the queue. "Let it crash": recovery lives in the supervision
tree, not in try/except around every call.

Run it:  python examples/supervised_pool.py
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

import numbeam as nb

WORKERS = 3
JOBS = 12
SAMPLES = 200_000
CORRUPT_BATCHES = {4, 7, 10}  # these jobs crash the first worker that takes them

log = logging.getLogger("pool")


@dataclass(frozen=True)
class Job:
    n: int
    attempt: int = 1


def estimate_pi(seed: int, samples: int) -> float:
    """Monte Carlo: the share of random points of the unit square inside the quarter circle."""
    xy = np.random.default_rng(seed).random((samples, 2))
    return 4.0 * np.count_nonzero((xy * xy).sum(axis=1) <= 1.0) / samples


class Worker(nb.GenServer):
    """Takes ("job", job, reply_to) casts and sends ("done", worker_id, job, value) back."""

    async def init(self, index: int) -> None:
        self.id = f"worker{index}"
        log.info("%s is up as %s", self.id, nb.self())

    async def handle_cast(self, request: Any) -> None:
        _, job, reply_to = request
        if job.n in CORRUPT_BATCHES and job.attempt == 1:
            raise ValueError(f"job {job.n}: corrupt input batch")
        value = await nb.offload(estimate_pi, job.n, SAMPLES)
        nb.send(reply_to, ("done", self.id, job, value))


async def worker_pids(sup: nb.Pid) -> dict[str, nb.Pid]:
    """Ask the supervisor for its children: {child id: current pid}."""
    return {child_id: pid for child_id, pid, _ in await nb.Supervisor.which_children(sup)}


async def main() -> None:
    children = [
        nb.Child(Worker, args=(i,), kwargs={"name": f"worker{i}"}, id=f"worker{i}")
        for i in range(WORKERS)
    ]
    sup = await nb.Supervisor.start_link(
        children, strategy="one_for_one", intensity=10, period=5.0, name="pool"
    )
    pids = await worker_pids(sup)
    log.info("supervisor %s runs %s", sup, ", ".join(f"{w}={p}" for w, p in pids.items()))

    queue = deque(Job(n) for n in range(1, JOBS + 1))
    idle = list(pids)
    running: dict[nb.Ref, tuple[str, Job]] = {}  # monitor ref -> (worker id, its job)
    results: dict[int, float] = {}
    crashes = restarts = 0
    while len(results) < JOBS:
        while idle and queue:
            worker, job = idle.pop(0), queue.popleft()
            running[nb.monitor(pids[worker])] = (worker, job)
            nb.cast(pids[worker], ("job", job, nb.self()))
            retry = f" (attempt {job.attempt})" if job.attempt > 1 else ""
            log.info("job %2d -> %s %s%s", job.n, worker, pids[worker], retry)
        match await nb.receive(timeout=10.0):
            case ("done", worker, job, value):
                ref = next(r for r, (w, _) in running.items() if w == worker)
                del running[ref]
                nb.demonitor(ref, flush=True)
                results[job.n] = value
                idle.append(worker)
                log.info("job %2d done by %s: pi ~ %.4f", job.n, worker, value)
            case nb.Down(ref=ref, pid=pid, reason=reason):
                crashes += 1
                worker, job = running.pop(ref)
                log.warning(
                    "job %2d goes back in the queue: %s %s died (%s)",
                    job.n,
                    worker,
                    pid,
                    type(reason).__name__,
                )
                pids = await worker_pids(sup)
                if pids[worker] != pid:
                    restarts += 1
                log.info("supervisor restarted %s: %s -> %s", worker, pid, pids[worker])
                queue.append(Job(job.n, job.attempt + 1))  # try it again
                idle.append(worker)

    estimate = sum(results.values()) / len(results)
    log.info(
        "all %d jobs done: pi ~ %.5f from %s samples; %d crashes, %d restarts, no job lost",
        JOBS,
        estimate,
        f"{JOBS * SAMPLES:,}",
        crashes,
        restarts,
    )
    for child_id, pid, kind in await nb.Supervisor.which_children(sup):
        log.info("  %s: %s (%s)", child_id, pid, kind)
    # Returning stops the node: the supervisor gets "shutdown" and stops its workers.


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s", stream=sys.stdout
    )
    nb.run(main)
