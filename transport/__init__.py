"""numbeam.transport: nodes, the ZeroMQ links between them, the msgpack wire, the handshake,
cluster-wide names (`global_register`) and process groups (`pg`).

Everything public is re-exported from `numbeam`.
"""

from . import pg
from ._api import connect, disconnect, monitor_node, nodes
from ._global import global_register, global_registered, global_unregister, global_whereis

__all__ = [
    "connect",
    "disconnect",
    "global_register",
    "global_registered",
    "global_unregister",
    "global_whereis",
    "monitor_node",
    "nodes",
    "pg",
]
