"""A Redis stream read through a consumer group, as a durable pipeline source.

Each pipeline is one consumer of the group. ``fetch`` gives, in this order:

1. on its first calls, the entries this consumer name had fetched and never acknowledged
   (its pending entries list, read with ``XREADGROUP ... 0``): a pipeline restarted under
   the same consumer name after a crash picks them up again;
2. entries another consumer left pending for at least `claim_idle` seconds (a dead consumer,
   a killed node), taken over with ``XAUTOCLAIM``, at most every `claim_idle` / 2 seconds;
3. new entries (``XREADGROUP ... >``), waiting up to `block` seconds for some.

``ack`` sends ``XACK`` for ok and failed entries alike (a failed entry is done: it is not
redelivered); with `dead_letter`, failed entries are first added to that stream with their
reason. Entries are ``(entry_id, fields)``: the id as a str, the fields as a dict (bytes
unless `decode_responses`). Uses redis-py's asyncio client (the ``redis`` extra).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["RedisStreamSource", "from_redis_stream"]


def _str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class RedisStreamSource:
    """A Redis stream consumer group as an `nb.pipeline.Source`; made by `from_redis_stream`.

    Attributes:
        claimed: how many entries were taken over from other consumers (XAUTOCLAIM).
        redelivered: how many of this consumer's own pending entries were fetched again.
    """

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: str,
        url: str,
        client: Any,
        block: float | None,
        claim_idle: float | None,
        until_empty: bool,
        start_id: str,
        dead_letter: str | None,
        decode_responses: bool,
    ) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.url = url
        self.block = block
        self.claim_idle = claim_idle
        self.until_empty = until_empty
        self.start_id = start_id
        self.dead_letter = dead_letter
        self.decode_responses = decode_responses
        self._client = client
        self._own_client = client is None
        self._ready = False
        self._own_cursor: str | None = "0"  # reading our own pending entries until None
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._outstanding: set[str] = set()  # fetched, not yet acknowledged
        self.claimed = 0
        self.redelivered = 0

    def __repr__(self) -> str:
        return (
            f"<nb.pipeline.from_redis_stream {self.stream!r} group {self.group!r} "
            f"consumer {self.consumer!r}>"
        )

    async def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url, decode_responses=self.decode_responses)
        if not self._ready:
            import redis.exceptions

            try:
                await self._client.xgroup_create(
                    self.stream, self.group, id=self.start_id, mkstream=True
                )
            except redis.exceptions.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
            self._ready = True
        return self._client

    def _take(self, entries: Any, out: list[Any], dead: list[str], known: set[str]) -> None:
        for entry_id, fields in entries or ():
            eid = _str(entry_id)
            if eid in self._outstanding or eid in known:
                # Already ours and in flight, or it was when the request was sent (an ack
                # running meanwhile may have removed it since): never handed out twice.
                continue
            if fields is None:  # deleted from the stream while pending
                dead.append(eid)
                continue
            self._outstanding.add(eid)
            out.append((eid, dict(fields)))

    async def fetch(self, demand: int) -> list[Any] | None:
        """Up to `demand` entries: our own pending ones first, then ones taken over from
        consumers idle for `claim_idle` seconds, then new ones; see the module docstring."""
        r = await self._redis()
        out: list[Any] = []
        dead: list[str] = []
        if self._own_cursor is not None:
            known = set(self._outstanding)
            reply = await r.xreadgroup(
                self.group, self.consumer, {self.stream: self._own_cursor}, count=demand
            )
            entries = reply[0][1] if reply else []
            if entries:
                self._own_cursor = _str(entries[-1][0])
                before = len(out)
                self._take(entries, out, dead, known)
                self.redelivered += len(out) - before
            else:
                self._own_cursor = None
        claimed_any = False
        if len(out) < demand and self.claim_idle is not None:
            now = time.monotonic()
            if now >= self._next_claim:
                known = set(self._outstanding)
                res = await r.xautoclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    min_idle_time=int(self.claim_idle * 1000),
                    start_id=self._claim_cursor,
                    count=demand - len(out),
                )
                cursor = _str(res[0])
                before = len(out)
                self._take(res[1], out, dead, known)
                got = len(out) - before
                self.claimed += got
                claimed_any = got > 0
                self._claim_cursor = cursor
                if cursor == "0-0":  # a full pass over the pending entries: rest a while
                    self._next_claim = now + self.claim_idle / 2
        if len(out) < demand and self._own_cursor is None:
            block = None
            if not out and self.block is not None and not self.until_empty:
                block = max(1, int(self.block * 1000))
            reply = await r.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=demand - len(out), block=block
            )
            self._take(reply[0][1] if reply else [], out, dead, set())
        if dead:
            await r.xack(self.stream, self.group, *dead)
        if not out and self.until_empty and self._own_cursor is None and not claimed_any:
            return None
        return out

    async def ack(self, ok_items: list[Any], failed: list[tuple[Any, Any]]) -> None:
        """XACK every entry (failed ones too, after adding them to `dead_letter` if set)."""
        r = await self._redis()
        ids = [item[0] for item in ok_items]
        ids += [item[0] for item, _ in failed]
        if failed and self.dead_letter is not None:
            pipe = r.pipeline(transaction=False)
            for (eid, fields), reason in failed:
                pipe.xadd(self.dead_letter, {**fields, "$id": eid, "$reason": repr(reason)})
            await pipe.execute()
        if ids:
            await r.xack(self.stream, self.group, *ids)
        self._outstanding.difference_update(ids)

    async def aclose(self) -> None:
        """Close the client this source made (not one it was given)."""
        if self._own_client and self._client is not None:
            client, self._client = self._client, None
            self._ready = False
            await client.aclose()


def from_redis_stream(
    stream: str,
    group: str,
    consumer: str,
    *,
    url: str = "redis://127.0.0.1:6379/0",
    client: Any = None,
    block: float | None = 1.0,
    claim_idle: float | None = 30.0,
    until_empty: bool = False,
    start_id: str = "0",
    dead_letter: str | None = None,
    decode_responses: bool = False,
) -> RedisStreamSource:
    """A durable pipeline source: the Redis stream `stream`, read as `consumer` of the
    consumer group `group` (created at `start_id`, with the stream, if missing).

    Args:
        url: the server, for a client made here (redis-py's ``Redis.from_url``).
        client: a ``redis.asyncio.Redis`` to use instead (not closed by the pipeline).
        block: seconds a fetch waits for new entries (None: it does not wait).
        claim_idle: take over entries other consumers left pending this many seconds
            (XAUTOCLAIM); None never takes any over.
        until_empty: end the stream (the pipeline finishes) when a fetch finds nothing new,
            nothing of ours pending and nothing to take over, instead of waiting for more.
        dead_letter: a stream to add failed entries to (with ``$id`` and ``$reason``).
        decode_responses: fields as str instead of bytes.

    Raises:
        TypeError: a name is not a non-empty str.
        ValueError: `block` or `claim_idle` is negative.
    """
    for what, value in (("stream", stream), ("group", group), ("consumer", consumer)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"from_redis_stream({what}=...) takes a non-empty str, got {value!r}")
    for what, secs in (("block", block), ("claim_idle", claim_idle)):
        if secs is not None and (isinstance(secs, bool) or not isinstance(secs, (int, float))):
            raise TypeError(f"from_redis_stream({what}=...) takes seconds or None, got {secs!r}")
        if secs is not None and secs < 0:
            raise ValueError(f"from_redis_stream({what}={secs}): must be >= 0")
    if client is None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "nb.pipeline.from_redis_stream needs redis-py: pip install 'numbeam[redis]'"
            ) from e
    return RedisStreamSource(
        stream,
        group,
        consumer,
        url,
        client,
        block,
        claim_idle,
        until_empty,
        start_id,
        dead_letter,
        decode_responses,
    )
