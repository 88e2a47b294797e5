"""numbeam.tensors: immutable tensor handles whose bytes live in shared memory.

``nb.tensor(data, dtype=None, device=None)`` makes one; `Tensor` is the handle; `Builder` and
`build` write a new tensor in place; `from_dlpack` imports from any DLPack producer; `stats`
reports this node's tensor memory. See `_tensor` for the handle, `_memory` for the shared
memory and how it is freed across processes, `_share` for how handles cross to other nodes on
the host, `numbeam.gpu._backend` for device memory.
"""

from __future__ import annotations

from typing import Any

from . import _memory
from ._dtypes import DTYPES
from ._tensor import Builder, Tensor, build, from_dlpack, tensor

__all__ = ["DTYPES", "Builder", "Tensor", "build", "from_dlpack", "stats", "tensor"]


def stats() -> dict[str, Any]:
    """This node's tensor memory (one node is one OS process), as a dict:

    ``buffers`` and ``bytes``: the live tensor buffers this node allocated, and their bytes;
    ``reserved``: the shared memory it holds for them (arena chunks included);
    ``segments``: how many shared-memory files that is; ``mapped`` and ``mapped_bytes``:
    segments of other nodes mapped here for tensors received from them; ``budget`` and
    ``threshold``: the node options ``tensor_budget`` and ``tensor_threshold``.
    Small tensors kept inline (``threshold`` bytes or fewer) are not counted. All of these are
    ``cpu`` memory; ``devices`` maps each device that has had memory here (``"fake:0"``,
    ``"cuda:1"``) to ``{"buffers", "bytes", "exported", "imported"}``: its live buffers
    allocated here and their bytes, how many of those were sent to other processes as handles,
    and how many buffers of other processes are mapped here.
    """
    return _memory.stats()
