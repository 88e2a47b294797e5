"""The constants of the distribution layer, in one place: the handshake's magic, the spawn id
ranges, the bounds on what a peer can make a node hold, the operation codes of a batch, and the
states of a peer. `_node`, `_handshake`, `_outgoing` and `_dispatch` import them from here.

Operation codes from ``OP_USER`` up belong to handlers that extensions register
(`Distribution.register_handler`): global names use 20-28 (`_global`), process groups 30-32
(`_pg`), and CUDA buffer releases 40 (``OP_CUDA_RELEASE``, registered by `Distribution`).
"""

from __future__ import annotations

import zmq

MAGIC = b"NBH1"
SLOT_SHIFT = 40  # ids >= 1 << 40 are allocated by the node that asked for the spawn
_LOCAL_IDS = (1 << SLOT_SHIFT) - 1
BATCH_BYTES = 16 * 1024  # a batch is sealed (sent as its own ZeroMQ message) beyond this
# Bounds on what a peer can make a node hold (see _gate for the connections themselves).
RCVHWM = 1000  # ZeroMQ messages queued per incoming connection; past it, the sender waits
HANDSHAKE_FRAME = 4096  # the largest frame taken from a connection before it authenticates
MAX_HELD = 10_000  # operations held per peer for pids whose remote spawn has not arrived

# Plain ints: zmq's constants are IntFlags, whose `&` costs more than the getsockopt itself.
_EVENTS, _RCVMORE = int(zmq.EVENTS), int(zmq.RCVMORE)
_POLLIN, _POLLOUT, _NOBLOCK = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.NOBLOCK)

# Operations (the first element of each item in a batch).
OP_SEND, OP_SEND_NAME, OP_LINK, OP_UNLINK, OP_EXIT, OP_MONITOR, OP_DEMONITOR = range(7)
OP_DOWN, OP_SPAWN, OP_REPLY, OP_NODES, OP_BYE = range(7, 12)
OP_CAST_NAME = 12  # [op, name, request]: nb.cast to (name, node), delivered as a $gen_cast
OP_USER = 20  # first code for registered handlers (global names, process groups)
OP_CUDA_RELEASE = 40  # [op, payload]: an importer let go of CUDA buffers (numbeam.gpu._cuda)

_CONNECTING, _UP, _DOWN = 0, 1, 2

__all__ = [
    "BATCH_BYTES",
    "HANDSHAKE_FRAME",
    "MAGIC",
    "MAX_HELD",
    "OP_BYE",
    "OP_CAST_NAME",
    "OP_CUDA_RELEASE",
    "OP_DEMONITOR",
    "OP_DOWN",
    "OP_EXIT",
    "OP_LINK",
    "OP_MONITOR",
    "OP_NODES",
    "OP_REPLY",
    "OP_SEND",
    "OP_SEND_NAME",
    "OP_SPAWN",
    "OP_UNLINK",
    "OP_USER",
    "RCVHWM",
    "SLOT_SHIFT",
]
