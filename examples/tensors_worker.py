"""What examples/tensors.py runs on its worker node: a module, not a program (see
examples/cluster_worker.py for why remote functions live in a module)."""

from __future__ import annotations

import numpy as np

import numbeam as nb


def mapping_of(t: nb.Tensor) -> tuple[str, int]:
    """(permissions, inode) of the memory mapping that holds ``t``'s bytes in this process."""
    addr = t.numpy().__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= addr < high:
                return fields[1], int(fields[4])
    raise LookupError("no mapping holds the tensor")


async def column_means(reply_to: nb.Pid) -> None:
    """Receive a matrix tensor, answer its column means (a new tensor) and how it was mapped."""
    matrix = await nb.receive(nb.Tensor)
    perms, inode = mapping_of(matrix)

    def compute() -> nb.Tensor:
        return nb.tensors.build(
            matrix.shape[1], "f32", lambda out: np.mean(matrix.numpy(), axis=0, out=out)
        )

    means = await nb.offload(compute)  # the node keeps serving meanwhile
    nb.send(reply_to, ("means", means, perms, inode, nb.tensors.stats()["mapped_bytes"]))
