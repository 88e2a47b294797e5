"""The serving's decisions, as plain data and functions of the time: which requests form the
next batch, when it leaves, and which serving instance a request goes to.

Nothing here does I/O or reads a clock: the server (`_server`) passes ``now`` in and carries
out what these return, so batching and routing are unit-tested without a runtime, as OTP
tests a supervisor's restart bookkeeping. A queue entry is one *input*; a request (one
`nb.serving.run`, or a `run_batch` of several inputs) is answered once all of its inputs are
done, or at once when one of them fails or it is withdrawn. Withdrawn and failed requests
leave their queued inputs behind as tombstones that `take` skips, so withdrawal is O(1).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher", "Item", "Request", "choose_instance", "split_by_signature"]


@dataclass(eq=False, slots=True)
class Request:
    """One caller's request: `n` inputs, answered with `n` rows (or one error)."""

    key: Any  # what the server answers it by (the caller's reply handle and request id)
    n: int
    arrived: float
    rows: list[Any] = field(default_factory=list)
    left: int = 0  # inputs not yet answered
    queued: int = 0  # inputs still in the queue (not yet taken into a batch)
    done: bool = False

    def __post_init__(self) -> None:
        self.rows = [None] * self.n
        self.left = self.n


@dataclass(eq=False, slots=True)
class Item:
    """One input of a request, waiting in the queue."""

    request: Request
    index: int
    value: Any
    signature: Hashable
    arrived: float


class Batcher:
    """The queue of one serving: batches of at most `batch_size` inputs, each leaving when
    full or `batch_timeout` seconds after its oldest input arrived, and `max_queue` inputs
    waiting at most."""

    def __init__(self, batch_size: int, batch_timeout: float, max_queue: int) -> None:
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.max_queue = max_queue
        self._queue: deque[Item] = deque()
        self.waiting = 0  # live inputs in the queue

    def admits(self, n: int) -> bool:
        """Whether `n` more inputs fit: False once `max_queue` inputs already wait."""
        return self.waiting + n <= self.max_queue

    def add(self, request: Request, values: Sequence[Any], signatures: Sequence[Hashable]) -> None:
        for i, (value, sig) in enumerate(zip(values, signatures, strict=True)):
            self._queue.append(Item(request, i, value, sig, request.arrived))
        request.queued += len(values)
        self.waiting += len(values)

    def withdraw(self, request: Request) -> None:
        """Mark `request` done; its inputs still queued will not run."""
        request.done = True
        self.waiting -= request.queued
        request.queued = 0

    def _head(self) -> Item | None:
        q = self._queue
        while q and q[0].request.done:
            q.popleft()
        return q[0] if q else None

    def deadline(self) -> float | None:
        """When the oldest waiting input's batch must leave (None: nothing waits)."""
        head = self._head()
        return None if head is None else head.arrived + self.batch_timeout

    def ready(self, now: float) -> bool:
        """Whether a batch should leave now: a full one waits, or the oldest input has waited
        `batch_timeout`."""
        if self.waiting >= self.batch_size:
            return True
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> list[Item]:
        """Up to `batch_size` live inputs, oldest first, out of the queue."""
        batch: list[Item] = []
        q = self._queue
        while q and len(batch) < self.batch_size:
            item = q.popleft()
            if item.request.done:
                continue
            item.request.queued -= 1
            self.waiting -= 1
            batch.append(item)
        return batch


def split_by_signature(
    items: Sequence[Item], preferred: Hashable | None
) -> tuple[Hashable, list[Item], list[Item]]:
    """``(signature, fitting, misfits)``: the inputs that can be stacked into one batch, and
    the others. The batch takes `preferred` (the last batch's signature) if any input has it,
    else the most common signature, the earliest among equals; a lone odd input cannot make
    the rest of its batch fail."""
    counts: dict[Hashable, int] = {}
    for item in items:
        counts[item.signature] = counts.get(item.signature, 0) + 1
    if preferred is not None and preferred in counts:
        chosen = preferred
    else:
        chosen = max(counts, key=counts.__getitem__)  # first maximal one in insertion order
    fitting = [i for i in items if i.signature == chosen]
    misfits = [i for i in items if i.signature != chosen]
    return chosen, fitting, misfits


def choose_instance(
    local: Iterable[Any],
    members: Iterable[Any],
    load: dict[Any, int],
    exclude: set[Any],
    rng: random.Random | None = None,
) -> Any | None:
    """The serving a request goes to: one of this node's (`local`) if there is one, else the
    least loaded of the others by `load` (its last reported queue length plus the requests
    this node has in flight there), a random one among equals; None when none is left.
    Instances in `exclude` (already found gone) are skipped."""
    pick = rng or random
    for group in (local, members):
        candidates = [p for p in dict.fromkeys(group) if p not in exclude]
        if candidates:
            least = min(load.get(p, 0) for p in candidates)
            return pick.choice([p for p in candidates if load.get(p, 0) == least])
    return None
