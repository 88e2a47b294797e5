"""The public node functions: `nodes`, `connect`, `disconnect`, `monitor_node`.

They act on the running runtime's distribution layer; on a local runtime (no ``node=``) there
are no other nodes: `nodes` is empty and `connect` refuses with a clear error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from numbeam.actors._runtime import _me, _rt

if TYPE_CHECKING:
    from ._node import Distribution

__all__ = ["connect", "disconnect", "monitor_node", "nodes"]


def _dist(what: str) -> Distribution:
    dist = _rt().dist
    if dist is None:
        raise RuntimeError(
            f"{what}: this runtime is local; start it with a node name, e.g. "
            "nb.run(main, node='a@127.0.0.1:0') or nb.Runtime(node=...)"
        )
    return dist


def nodes() -> list[str]:
    """The names of the nodes this node is connected to (not itself)."""
    dist = _rt().dist
    return [] if dist is None else dist.nodes()


async def connect(name: str) -> bool:
    """Connect to the node `name` (``name@host:port`` or ``name@ipc:///path``).

    Returns True once the handshake has succeeded (at once if already connected), False if the
    node cannot be reached, refuses our cookie, or does not answer within ``connect_timeout``.
    The new peer then introduces the nodes it knows: connections are transitive.
    """
    return await _dist("nb.connect()").connect(name)


def disconnect(name: str) -> bool:
    """Close the connection to `name`, on both sides; False if there was none.

    What was already sent goes out first. Links and monitors across it fire with
    ``"noconnection"`` and node monitors get ``NodeDown(name, "disconnect")`` on both sides.
    """
    return _dist("nb.disconnect()").disconnect(name)


def monitor_node(name: str, flag: bool = True) -> bool:
    """Monitor the node `name` from the calling process (``flag=False`` removes one monitor).

    When the connection is lost, or cannot be made, the caller gets ``nb.NodeDown(name,
    reason)``, once per call. Connects to the node if need be.
    """
    me = _me("nb.monitor_node()")
    if not isinstance(flag, bool):
        raise TypeError(f"nb.monitor_node() takes a bool flag, got {flag!r}")
    _dist("nb.monitor_node()").monitor_node(me.pid, name, flag)
    return True
