"""What the pipeline tests share: a source that records what it hands out and gets back."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numbeam as nb


class Recording:
    """Wraps a source: counts every acknowledgement per item, and the most items out
    (fetched, not yet acknowledged) at any time; forwards each ack to `notify`."""

    def __init__(self, inner: Any, notify: nb.Pid | None = None) -> None:
        self.inner = inner
        self.notify = notify
        self.out = 0
        self.max_out = 0
        self.fetched = 0
        self.acks: Counter[Any] = Counter()
        self.failed: dict[Any, Any] = {}
        self.ack_calls = 0
        self.on_ack: Any = None

    async def fetch(self, demand: int) -> list[Any] | None:
        got = await self.inner.fetch(demand)
        if got:
            self.fetched += len(got)
            self.out += len(got)
            self.max_out = max(self.max_out, self.out)
        return got

    async def ack(self, ok_items: list[Any], failed: list[tuple[Any, Any]]) -> None:
        self.ack_calls += 1
        self.out -= len(ok_items) + len(failed)
        self.acks.update(ok_items)
        for item, reason in failed:
            self.acks[item] += 1
            self.failed[item] = reason
        if self.on_ack is not None:
            self.on_ack(self)
        if self.notify is not None:
            nb.send(self.notify, ("acked", len(ok_items) + len(failed)))

    def assert_each_once(self, items: Any) -> None:
        assert set(self.acks) == set(items)
        assert [i for i, n in self.acks.items() if n != 1] == []
        assert self.out == 0
