"""Tensors between processes and nodes: handles to shared memory, never copies of the bytes.

A 64 MB matrix is written in place into shared memory (`nb.tensors.build`). Sent to a process of
this node it is the very same object. Sent to a node on this host (a second OS process, started
here as ``python -m numbeam node``), it crosses as a handle: the segment's file descriptor goes
ahead of the message, and the worker maps the same pages read-only. The worker answers with the
matrix's column means, a new tensor that comes back the same way. Finally the example drops
everything and shows the memory given back.

Run it:  python examples/tensors.py
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import tempfile

import numpy as np
import tensors_worker
from cluster import TIMEOUT, start_node, stop_node, wait_ready

import numbeam as nb

N = 4096  # the matrix is N x N float32: 64 MiB


async def same_node_consumer(reply_to: nb.Pid) -> None:
    t = await nb.receive(nb.Tensor)
    nb.send(reply_to, ("got", id(t)))


async def main(worker: str) -> None:
    rng = np.random.default_rng(7)
    matrix = nb.tensors.build((N, N), "f32", lambda out: rng.random(out=out, dtype=np.float32))
    print(f"made {matrix.dtype}{list(matrix.shape)}: {matrix.nbytes >> 20} MiB in shared memory")

    # A process of this node receives the very object that was sent.
    pid = nb.spawn(same_node_consumer, nb.self())
    nb.send(pid, matrix)
    _, seen = await nb.receive(lambda m: m[0] == "got", timeout=TIMEOUT)
    print(f"same node: the receiver got the same object: {seen == id(matrix)}")

    # A node on this host maps the same pages.
    pid = nb.spawn(tensors_worker.column_means, nb.self(), node=worker)
    nb.send(pid, matrix)
    _, means, perms, inode, mapped = await nb.receive(
        lambda m: type(m) is tuple and m[0] == "means", timeout=TIMEOUT
    )
    _, my_inode = tensors_worker.mapping_of(matrix)
    print(
        f"other node: mapped {mapped >> 20} MiB, the same pages as ours "
        f"(inode {inode} == {my_inode}: {inode == my_inode}), read-only ({perms})"
    )
    expected = matrix.numpy().mean(axis=0)
    print(
        f"column means came back as {means.dtype}{list(means.shape)}, correct: "
        f"{bool(np.allclose(means.numpy(), expected, rtol=1e-4))}"
    )

    before = nb.tensors.stats()["reserved"]
    del matrix, means, expected
    after = nb.tensors.stats()["reserved"]
    print(f"dropped: this node holds {after >> 20} MiB of shared memory (was {before >> 20} MiB)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    env = {**os.environ, "NUMBEAM_COOKIE": secrets.token_urlsafe(32)}
    with tempfile.TemporaryFile() as worker_log:
        proc = start_node("worker@127.0.0.1:0", env, worker_log)
        try:
            name = wait_ready(proc, worker_log, TIMEOUT)
            nb.run(main, name, node="main@127.0.0.1:0", cookie=env["NUMBEAM_COOKIE"])
        finally:
            stop_node(proc)
            assert proc.stdout is not None
            proc.stdout.close()
