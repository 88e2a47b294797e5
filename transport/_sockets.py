"""ZeroMQ for the distribution layer: the one context per OS process, socket options every
node connection has, monitor addresses, and the optional C extension for the hot calls."""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from numbeam.actors._options import NodeOptions


def _load_zmqfast() -> Any:
    """The C extension for a node's hot ZeroMQ calls, bound to the libzmq pyzmq loaded; None
    where it was not built (no C compiler), cannot find that libzmq, or NUMBEAM_PURE_PYTHON is
    set: then pyzmq makes every call."""
    if os.environ.get("NUMBEAM_PURE_PYTHON"):
        return None
    try:
        from . import _zmqfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    # (zmq is imported above, so the libzmq it uses is loaded: find it among the mappings)
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libzmq" in line}
        for path in sorted(paths):
            try:
                _zmqfast.setup(path)
                return _zmqfast
            except OSError:
                continue
    except OSError:
        pass
    return None


_fast: Any = _load_zmqfast()


_context: zmq.Context[Any] | None = None


def _zmq_context() -> zmq.Context[Any]:
    # One context per OS process, never terminated: closing a socket with linger lets ZeroMQ
    # finish delivering in the background, which terminating the context would cut short.
    global _context
    if _context is None or _context.closed:
        _context = zmq.Context()
    return _context


_monitor_ids = itertools.count(1)


def _monitor_address() -> str:
    # pyzmq's default monitor address is made from the socket's FD number, which the OS
    # reuses: a new monitor could then connect to a dying one and never hear an event.
    return f"inproc://numbeam-monitor-{os.getpid()}-{next(_monitor_ids)}"


def heartbeats(sock: zmq.Socket[Any], opts: NodeOptions) -> None:
    """ZMTP heartbeats on `sock`, as the node's options say (ZeroMQ's failure detection)."""
    ivl = int(opts.heartbeat_interval * 1000)
    timeout = int(opts.heartbeat_timeout * 1000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(timeout, 6_553_500))


__all__ = ["heartbeats"]
