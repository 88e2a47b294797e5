"""Pipelines: demand-driven, acknowledged, supervised stages (GenStage/Broadway for numbeam).

class Square(nb.Pipeline):
    async def handle_message(self, item):
        return item * item

pid = await Square.start_link(nb.pipeline.from_iterable(range(100)), concurrency=4)
summary = await nb.pipeline.wait(pid)    # {"ok": 100, "failed": 0, "retried": 0}
"""

from ._pipeline import Pipeline, stats, stop, wait
from ._redis import RedisStreamSource, from_redis_stream
from ._sources import QueueSource, Source, from_async_iterable, from_iterable, from_queue

__all__ = [
    "Pipeline",
    "QueueSource",
    "RedisStreamSource",
    "Source",
    "from_async_iterable",
    "from_iterable",
    "from_queue",
    "from_redis_stream",
    "stats",
    "stop",
    "wait",
]
