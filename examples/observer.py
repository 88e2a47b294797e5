"""The supervised pool, running for as long as you like, with the observer on: watch it live.

Three workers under a `one_for_one` Supervisor take jobs from a dispatcher; now and then a job
is corrupt, its worker crashes and the supervisor restarts it. The node serves the observer
page (node option ``observer=PORT``) and Prometheus metrics at ``/metrics``. Open the URL it
prints: the processes (sort them by mailbox, messages, name), the supervision tree whose
restart count goes up, tensor memory; click a process to see its ``process_info``.
A telemetry handler counts the restarts as they happen, too.

Run it:  python examples/observer.py [--port 8484] [--seconds N]   (Ctrl-C stops it)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
from typing import Any

import numpy as np

import numbeam as nb

WORKERS = 3
log = logging.getLogger("observer-demo")


class Worker(nb.GenServer):
    """Takes ("job", n, reply_to) casts: sums a tensor it builds, or crashes on a bad job."""

    async def handle_cast(self, request: Any) -> None:
        _, n, reply_to = request
        if n % 7 == 0:
            raise ValueError(f"job {n}: corrupt input")
        t = nb.tensor(np.full(4096, n, dtype=np.float32))  # shared memory: see "tensor bytes"
        await asyncio.sleep(random.uniform(0.01, 0.05))
        nb.send(reply_to, ("done", n, float(t.numpy().sum())))


async def dispatcher(sup: nb.Pid) -> None:
    """Hands out jobs for ever, a few at a time."""
    n = 0
    while True:
        for _, pid, _ in await nb.Supervisor.which_children(sup):
            if pid is not None:
                n += 1
                nb.cast(pid, ("job", n, nb.self()))
        deadline = asyncio.get_running_loop().time() + 0.5
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                await nb.receive(timeout=left)
            except TimeoutError:
                break


async def main(seconds: float | None) -> None:
    restarts = 0

    def count_restart(event: Any, measurements: Any, metadata: Any) -> None:
        nonlocal restarts
        restarts += measurements["count"]

    nb.telemetry.attach("demo-restarts", ("numbeam", "supervisor", "restart"), count_restart)
    children = [
        nb.Child(Worker, id=f"worker{i}", kwargs={"name": f"worker{i}"}) for i in range(WORKERS)
    ]
    sup = await nb.Supervisor.start_link(children, intensity=100, period=1.0, name="pool")
    nb.spawn_link(dispatcher, sup, name="dispatcher")
    print(f"observer: {nb.observer.url()}  (metrics: {nb.observer.url()}metrics)", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
    print(f"stopping after {restarts} restarts", flush=True)
    nb.telemetry.detach("demo-restarts")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8484, help="observer port (0: a free one)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    nb.run(main, args.seconds, observer=args.port)
