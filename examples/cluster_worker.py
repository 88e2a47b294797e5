"""What examples/cluster.py and cluster_join.py run on their nodes: a module, not a program.

A remote spawn names its function by module path (``cluster_worker:chunk_stats``), and the node
that runs it imports it from there: worker nodes start with ``--path`` pointing at this folder
(``numbeam node --name w1@127.0.0.1:0 --path examples``), and the coordinator imports the same
module, so both sides agree on what the function is.
"""

from __future__ import annotations

import asyncio
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


async def await_nodes(reply_to: nb.Pid, expected: list[str], timeout: float) -> None:
    """Send `reply_to` ``("nodes", this node, sorted(nb.nodes()))`` once `nb.nodes()` lists every
    name in `expected`, or after `timeout` seconds if it never does (the reply shows what is
    missing). It waits on the runtime's node-up telemetry event, not by polling."""
    me = nb.self()
    handler_id = ("cluster_worker.await_nodes", me)  # one handler per waiting process
    # Attached before the first look at nb.nodes(): no connection can slip in between.
    nb.telemetry.attach(
        handler_id, ("numbeam", "node", "up"), lambda event, m, md: nb.send(me, ("up", md["peer"]))
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not set(expected) <= set(nb.nodes()):
            left = deadline - loop.time()
            if left <= 0:
                break  # report what there is
            try:
                await nb.receive(lambda m: type(m) is tuple and m[0] == "up", timeout=left)
            except TimeoutError:
                break
    finally:
        nb.telemetry.detach(handler_id)
    nb.send(reply_to, ("nodes", nb.node(), sorted(nb.nodes())))


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
