"""numbeam.observer: look at a running cluster.

The node option ``observer=PORT`` serves a live web page (every node of the cluster: its
processes, supervision trees, tensor memory and device workers, updated as they change)
and Prometheus metrics at ``/metrics``, from the node's own event loop; `url` says where.
``numbeam observer NODE`` serves the same page from a hidden node of its own, and
``numbeam remsh NODE`` opens an asyncio REPL in a cluster. aiohttp and prometheus_client are
imported only when a server starts.
"""

from __future__ import annotations

__all__ = ["url"]


def url() -> str | None:
    """The address of this node's observer page (``http://127.0.0.1:PORT/``), or None when
    it serves none (the node option ``observer`` is unset)."""
    from numbeam.actors._runtime import _rt

    obs = _rt().observer
    return None if obs is None else obs.url  # type: ignore[no-any-return]
