"""What examples/cluster.py runs on its worker nodes: a module, not a program.

A remote spawn names its function by module path (``cluster_worker:chunk_stats``), and the node
that runs it imports it from there: worker nodes start with ``--path`` pointing at this folder
(``numbeam node --name w1@127.0.0.1:0 --path examples``), and the coordinator imports the same
module, so both sides agree on what the function is.
"""

from __future__ import annotations

import os
import signal

import numpy as np

import numbeam as nb


def percentiles(chunk: np.ndarray) -> list[float]:
    """The chunk's 1st, 50th and 99th percentiles: the job's numpy work (a partial sort)."""
    return np.percentile(chunk, [1, 50, 99]).tolist()


async def chunk_stats(reply_to: nb.Pid, job: int, chunk: np.ndarray) -> None:
    """One job as a process: compute in a thread, so the node keeps serving, then report."""
    value = await nb.offload(percentiles, chunk)
    nb.send(reply_to, ("result", job, value, nb.self()))


async def kill_node() -> None:
    """Kill the node this runs on with SIGKILL: no cleanup, no goodbye, like a power cut."""
    os.kill(os.getpid(), signal.SIGKILL)


class Tally(nb.GenServer):
    """A running sum kept on a worker node, for supervising across nodes (README, "Nodes")."""

    async def init(self, owner: nb.Pid) -> None:
        self.total = 0.0
        nb.send(owner, ("tally", nb.self()))  # tell the owner where this start runs

    async def handle_call(self, request: tuple[str, float], caller: object) -> float:
        op, value = request
        if op != "add":
            raise ValueError(f"unknown request {op!r}")
        self.total += value
        return self.total
