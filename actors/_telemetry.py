"""Telemetry events, in the spirit of Elixir's ``:telemetry``: the runtime *emits* events, and
code that wants to know *attaches* handlers to them.

An event is a tuple of names such as ``("numbeam", "process", "exit")``; a handler is called
as ``fn(event, measurements, metadata)`` with two dicts, synchronously, in the emitting code
(so it must be quick: count, observe a histogram, send a message). A handler that raises is
detached and logged; the code that emitted never sees the error.

What nothing listens to costs nothing: every emitter in the runtime first checks whether the
table of handlers is empty (one truth test of a dict), and builds its measurements and
metadata only when some handler is attached.

Events the runtime emits (measurements; metadata):

- ``("numbeam", "process", "spawn")``: ``system_time`` (ns since the epoch);
  ``pid``, ``function`` (qualified name), ``name`` (registered name or None), ``node``.
- ``("numbeam", "process", "exit")``: ``system_time``, ``duration`` (ns the process lived;
  0 if it was spawned before any handler was attached); ``pid``, ``function``, ``name``,
  ``reason``, ``node``.
- ``("numbeam", "supervisor", "restart")``: ``count`` (1), ``system_time``; ``supervisor``
  (its pid), ``supervisor_name``, ``child_id``, ``pid`` (the new child), ``node``.
- ``("numbeam", "node", "up")`` and ``("numbeam", "node", "down")``: ``system_time``;
  ``node`` (this node), ``peer`` (the other one), and for down the ``reason``.
- ``("numbeam", "serving", "batch")``, when a batch of an `nb.Serving` has run (in the
  serving's node): ``system_time``, ``size`` (inputs), ``duration`` (ns from hand-off to the
  partition to its answer), ``queue_length`` (inputs still waiting); ``name``, ``serving``
  (its pid), ``partition``, ``device`` (or None), ``ok``, ``error`` (None, or what failed it).
- ``("numbeam", "pipeline", "batch")``, when a pipeline's batcher has run ``handle_batch``:
  ``system_time``, ``size`` (items), ``duration`` (ns in ``handle_batch``); ``pipeline``
  (its pid), ``batcher`` (pid), ``ok``, ``error`` (None, or the exception it raised).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["attach", "attach_many", "detach", "execute", "list_handlers"]

log = logging.getLogger("numbeam")

Event = tuple[str, ...]
Handler = Callable[[Event, dict[str, Any], dict[str, Any]], Any]

# event -> [(handler_id, fn, config)], in attach order. Emitters test `handlers` for emptiness
# before doing any work; an event with no handler left is removed, so that test stays exact.
handlers: dict[Event, list[tuple[Hashable, Handler]]] = {}
# handler_id -> the events it is attached to
_ids: dict[Hashable, list[Event]] = {}


def _check_event(event: Any) -> Event:
    if (
        type(event) is not tuple
        or not event
        or not all(type(part) is str and part for part in event)
    ):
        raise TypeError(
            "a telemetry event is a non-empty tuple of non-empty str, such as "
            f"('numbeam', 'process', 'exit'); got {event!r}"
        )
    return event


def attach(handler_id: Hashable, event: Event, fn: Handler) -> None:
    """Call ``fn(event, measurements, metadata)`` each time `event` is emitted.

    Raises:
        TypeError: `event` is not a tuple of names, or `fn` is not callable, or
            `handler_id` is not hashable.
        ValueError: a handler is already attached under `handler_id` (detach it first).
    """
    attach_many(handler_id, [event], fn)


def attach_many(handler_id: Hashable, events: list[Event], fn: Handler) -> None:
    """Like `attach`, for several events under one handler id."""
    try:
        hash(handler_id)
    except TypeError:
        raise TypeError(f"a telemetry handler id must be hashable, got {handler_id!r}") from None
    if not callable(fn):
        raise TypeError(f"a telemetry handler must be callable, got {fn!r}")
    checked = [_check_event(e) for e in events]
    if not checked:
        raise ValueError("attach_many() needs at least one event")
    if handler_id in _ids:
        raise ValueError(f"a telemetry handler is already attached as {handler_id!r}")
    _ids[handler_id] = checked
    for e in checked:
        handlers.setdefault(e, []).append((handler_id, fn))


def detach(handler_id: Hashable) -> bool:
    """Detach the handler `handler_id` from all its events; False if there was none."""
    events = _ids.pop(handler_id, None)
    if events is None:
        return False
    for e in events:
        left = [h for h in handlers.get(e, ()) if h[0] != handler_id]
        if left:
            handlers[e] = left
        else:
            handlers.pop(e, None)
    return True


def list_handlers(prefix: Event = ()) -> list[dict[str, Any]]:
    """The attached handlers whose event starts with `prefix`: dicts with ``id``, ``event``,
    ``function``."""
    out: list[dict[str, Any]] = []
    for e, hs in handlers.items():
        if e[: len(prefix)] == prefix:
            out.extend({"id": hid, "event": e, "function": fn} for hid, fn in hs)
    return out


def execute(event: Event, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Emit `event`: call every handler attached to it, in attach order.

    A handler that raises is detached and logged (with its traceback); the others still run
    and the caller never sees the error.
    """
    hs = handlers.get(event)
    if not hs:
        return
    for hid, fn in hs:
        try:
            fn(event, measurements, metadata)
        except Exception:
            log.exception(
                "telemetry handler %r for %r raised, and is detached",
                hid,
                event,
                extra={"numbeam_handler": hid, "numbeam_event": event},
            )
            detach(hid)
