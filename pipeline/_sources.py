"""The producer side of a pipeline: the `Source` protocol and the in-memory built-ins.

A source is what a pipeline pulls items from and acknowledges them to. The pipeline's
coordinator process calls ``await source.fetch(demand)`` (never more than one at a time) for
at most `demand` items: a list of them, an empty list when there are none yet (the pipeline
asks again a little later), or None once the source is exhausted. Every item fetched is given
back exactly once through ``await source.ack(ok_items, failed)`` (`failed` is a list of
``(item, reason)``), possibly batched with others, in no particular order. A source may also
define ``async aclose()``: the pipeline calls it once, when it ends, to release connections.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

__all__ = ["QueueSource", "Source", "from_async_iterable", "from_iterable", "from_queue"]


@runtime_checkable
class Source(Protocol):
    """The producer protocol of `nb.Pipeline`: what a pipeline fetches items from and
    acknowledges them to.

    ``async fetch(demand) -> list | None``: up to `demand` items; ``[]`` when there are none
    yet (the pipeline asks again shortly), None when the source is exhausted.
    ``async ack(ok_items, failed)``: the items that went through (a list) and those that
    failed after their retries (a list of ``(item, reason)``); every fetched item comes back
    exactly once, in one of the two.
    """

    async def fetch(self, demand: int) -> list[Any] | None:
        """Up to `demand` items, ``[]`` for none yet, None when exhausted."""
        ...

    async def ack(self, ok_items: list[Any], failed: list[tuple[Any, Any]]) -> None:
        """Acknowledge items: those that succeeded and those that failed, with reasons."""
        ...


def check_source(source: Any) -> None:
    """TypeError unless `source` has the two coroutine methods of `Source`."""
    for method in ("fetch", "ack"):
        fn = getattr(source, method, None)
        if fn is None or not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"a pipeline source needs an async {method}() method (nb.pipeline.Source), got "
                f"{source!r}; wrap a plain iterable with nb.pipeline.from_iterable()"
            )


class _IterableSource:
    """Items from an ordinary iterable, taken as they are asked for."""

    _ack_noop = True  # the pipeline may skip calling ack (it does nothing)

    def __init__(self, items: Iterable[Any]) -> None:
        self._it: Iterator[Any] | None = iter(items)

    def _fetch_now(self, demand: int) -> list[Any] | None:
        """`fetch` without a coroutine: the pipeline calls this one directly."""
        if self._it is None:
            return None
        got = list(itertools.islice(self._it, demand))
        if len(got) < demand:
            self._it = None  # an iterator that ran short is done (a generator cannot resume)
        return got or None

    async def fetch(self, demand: int) -> list[Any] | None:
        return self._fetch_now(demand)

    async def ack(self, ok_items: list[Any], failed: list[tuple[Any, Any]]) -> None:
        """Nothing to tell an iterable: the pipeline's summary counts the outcomes."""

    def __repr__(self) -> str:
        return "nb.pipeline.from_iterable(...)"


def from_iterable(items: Iterable[Any]) -> Source:
    """A source of the items of `items` (a list, a range, a generator), read lazily, as
    processors ask for them. Acknowledgement is a no-op: see the pipeline's summary."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"from_iterable() takes an iterable of items, got {items!r}")
    return _IterableSource(items)


class _AsyncIterableSource:
    """Items from an async iterable. At most one item is read ahead: the pending ``__anext__``
    is kept between fetches (never cancelled until the pipeline ends), so none is lost."""

    _ack_noop = True

    def __init__(self, items: AsyncIterable[Any]) -> None:
        self._it: AsyncIterator[Any] = aiter(items)
        self._next: asyncio.Future[Any] | None = None
        self._done = False

    def _pending(self) -> asyncio.Future[Any]:
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._it))
        return self._next

    async def fetch(self, demand: int) -> list[Any] | None:
        if self._done:
            return None
        got: list[Any] = []
        nxt = self._pending()
        while len(got) < demand:
            if not nxt.done():
                if got:
                    await asyncio.sleep(0)  # let a ready producer run once, then hand over
                    if not nxt.done():
                        break
                else:
                    await asyncio.wait([nxt])
            self._next = None
            try:
                got.append(nxt.result())
            except StopAsyncIteration:
                self._done = True
                break
            nxt = self._pending()
        return got or (None if self._done else [])

    async def ack(self, ok_items: list[Any], failed: list[tuple[Any, Any]]) -> None:
        """Nothing to tell an async iterable: the pipeline's summary counts the outcomes."""

    async def aclose(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.cancel()
        self._next = None

    def __repr__(self) -> str:
        return "nb.pipeline.from_async_iterable(...)"


def from_async_iterable(items: AsyncIterable[Any]) -> Source:
    """A source of the items of an async iterable (an async generator, say), read as
    processors ask for them (one item read ahead at most)."""
    if not isinstance(items, AsyncIterable):
        raise TypeError(f"from_async_iterable() takes an async iterable, got {items!r}")
    return _AsyncIterableSource(items)


class QueueSource:
    """A bounded in-memory queue as a pipeline source: ``await q.put(item)`` waits while the
    queue holds `maxsize` items; ``q.close()`` ends the stream once what was put is taken.

    Made by `from_queue`; used from the same event loop as the pipeline.
    """

    _ack_noop = True

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def _update(self) -> None:
        if self._items or self._closed:
            self._readable.set()
        else:
            self._readable.clear()
        if len(self._items) < self.maxsize or self._closed:
            self._writable.set()
        else:
            self._writable.clear()

    async def put(self, item: Any) -> None:
        """Add `item`, waiting while the queue is full.

        Raises:
            ValueError: the queue is closed.
        """
        while True:
            if self._closed:
                raise ValueError("put() on a closed pipeline queue (from_queue)")
            if len(self._items) < self.maxsize:
                break
            await self._writable.wait()
        self._items.append(item)
        self._update()

    def put_nowait(self, item: Any) -> None:
        """Add `item` now. Raises asyncio.QueueFull when the queue is full, ValueError when
        it is closed."""
        if self._closed:
            raise ValueError("put_nowait() on a closed pipeline queue (from_queue)")
        if len(self._items) >= self.maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        self._update()

    def close(self) -> None:
        """End the stream: the pipeline takes what is queued, then sees the source exhausted."""
        self._closed = True
        self._update()

    async def fetch(self, demand: int) -> list[Any] | None:
        """Wait for at least one item (or the close), then take up to `demand`."""
        while not self._items:
            if self._closed:
                return None
            await self._readable.wait()
        take = min(demand, len(self._items))
        got = [self._items.popleft() for _ in range(take)]
        self._update()
        return got

    async def ack(self, ok_items: list[Any], failed: list[tuple[Any, Any]]) -> None:
        """Nothing to tell the queue: the pipeline's summary counts the outcomes."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<nb.pipeline.from_queue {len(self._items)}/{self.maxsize} {state}>"


def from_queue(maxsize: int = 1000) -> QueueSource:
    """A bounded queue to feed a pipeline from other code: ``await q.put(item)`` (waits while
    the queue is full), ``q.close()`` to end the stream once drained.

    Raises:
        TypeError, ValueError: `maxsize` is not an int >= 1.
    """
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"from_queue(maxsize=...) takes an int, got {maxsize!r}")
    if maxsize < 1:
        raise ValueError(f"from_queue(maxsize={maxsize}): maxsize must be >= 1")
    return QueueSource(maxsize)
