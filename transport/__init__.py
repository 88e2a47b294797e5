"""numbeam.transport: nodes, the ZeroMQ links between them, the msgpack wire, the handshake.

Everything public is re-exported from `numbeam`.
"""

from ._api import connect, disconnect, monitor_node, nodes

__all__ = ["connect", "disconnect", "monitor_node", "nodes"]
