"""What global names and process groups (`_global`, `_pg`) use of the distribution layer.

A structural type, so that they name no class of `_node`, whose `Distribution` installs them:
the imports go one way, from `_node` to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class DistributionHooks(Protocol):
    """The part of `numbeam.transport._node.Distribution` an extension of the runtime uses."""

    node_up_hooks: list[Callable[[str], None]]
    node_down_hooks: list[Callable[[str], None]]

    def register_handler(self, op: int, handler: Callable[[str, list[Any]], None]) -> None:
        """Route operations with code `op` (from ``OP_USER`` up) to `handler(node, item)`."""

    def send_op(self, node: str, item: list[Any]) -> None:
        """Send an operation (``item[0]`` is its code) to `node`, connecting if needed."""

    def nodes(self) -> list[str]:
        """The connected nodes, hidden ones left out."""


__all__ = ["DistributionHooks"]
