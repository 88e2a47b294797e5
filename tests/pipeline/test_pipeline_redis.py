"""The Redis stream source on a real `redis-server` (Debian's package; `.ci/run` installs it),
started on a free loopback port without persistence and stopped after each test: every
entry processed and acknowledged (XACK), a consumer restarted under its name taking its own
pending entries back, and the take-over of entries a dead consumer fetched and never
acknowledged (XAUTOCLAIM) with nothing processed twice.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import numbeam as nb

T = 10.0
REDIS = shutil.which("redis-server")
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install -y redis-server)"
)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [REDIS or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--loglevel", "notice", "--logfile", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        log = []
        for line in proc.stdout:  # its log, until it says it is ready
            log.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise AssertionError("redis-server did not start:\n" + "".join(log))
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=T)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


processed: Counter[str] = Counter()


class Entries(nb.Pipeline):
    """Counts every entry it processes (processors run in this OS process)."""

    async def handle_message(self, entry: Any) -> Any:
        entry_id, fields = entry
        processed[entry_id] += 1
        if fields[b"n"] == b"13":
            raise ValueError("13 is unlucky")
        return int(fields[b"n"])


async def fill(url: str, stream: str, n: int) -> list[str]:
    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(url) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(stream, {"n": str(i)})
        return [x.decode() for x in await pipe.execute()]


async def pending(url: str, stream: str, group: str) -> int:
    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(url) as r:
        return int((await r.xpending(stream, group))["pending"])


async def test_every_entry_is_processed_and_acknowledged(redis_url: str) -> None:
    processed.clear()
    ids = await fill(redis_url, "jobs", 500)
    async with nb.Runtime():
        src = nb.pipeline.from_redis_stream(
            "jobs", "workers", "c1", url=redis_url, until_empty=True, dead_letter="jobs:dead"
        )
        pid = await Entries.start_link(src, concurrency=3, max_demand=20)
        summary = await nb.pipeline.wait(pid, timeout=T)
    assert summary == {"ok": 499, "failed": 1, "retried": 0}
    assert processed == Counter({i: 1 for i in ids})
    assert await pending(redis_url, "jobs", "workers") == 0  # all of them XACKed

    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(redis_url) as r:
        [(_, dead)] = await r.xrange("jobs:dead")
    assert dead[b"$id"].decode() == ids[13] and b"unlucky" in dead[b"$reason"]


async def test_a_dead_consumers_entries_are_taken_over(redis_url: str) -> None:
    """Consumer "dead" fetches 30 entries and dies without acknowledging them; a pipeline
    as consumer "alive" claims them (claim_idle=0: at once) and processes every entry once;
    its own in-flight entries, also claimable with claim_idle=0, are never handed out twice."""
    processed.clear()
    ids = await fill(redis_url, "jobs", 200)
    async with nb.Runtime():
        dead = nb.pipeline.from_redis_stream("jobs", "g", "dead", url=redis_url, block=None)
        taken = await dead.fetch(30)
        assert taken is not None and [e for e, _ in taken] == ids[:30]
        await dead.aclose()  # gone, without an ack: its 30 entries stay pending
        assert await pending(redis_url, "jobs", "g") == 30
        src = nb.pipeline.from_redis_stream(
            "jobs", "g", "alive", url=redis_url, claim_idle=0.0, until_empty=True
        )
        pid = await Entries.start_link(src, concurrency=2, max_demand=10)
        summary = await nb.pipeline.wait(pid, timeout=T)
    dups = sorted(ids.index(i) for i, c in processed.items() if c > 1)
    assert dups == [], (dups, src.claimed)
    assert summary["ok"] + summary["failed"] == 200
    assert processed == Counter({i: 1 for i in ids})
    assert src.claimed == 30
    assert await pending(redis_url, "jobs", "g") == 0


async def test_a_restarted_consumer_takes_back_its_own_pending_entries(redis_url: str) -> None:
    processed.clear()
    ids = await fill(redis_url, "jobs", 100)
    async with nb.Runtime():
        before = nb.pipeline.from_redis_stream("jobs", "g", "c1", url=redis_url, block=None)
        assert len(await before.fetch(25) or []) == 25  # then "crashes"
        await before.aclose()
        again = nb.pipeline.from_redis_stream(
            "jobs", "g", "c1", url=redis_url, claim_idle=None, until_empty=True
        )
        pid = await Entries.start_link(again, concurrency=2)
        summary = await nb.pipeline.wait(pid, timeout=T)
    assert summary["ok"] + summary["failed"] == 100
    assert processed == Counter({i: 1 for i in ids})
    assert again.redelivered == 25 and again.claimed == 0
    assert await pending(redis_url, "jobs", "g") == 0


def test_a_pipeline_node_sigkilled_mid_run_and_started_again_loses_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """A pipeline node (its own OS process) is SIGKILLed after it wrote 300 of 1500 entries;
    the pipeline is started again under the same consumer name (here, in this process): it
    takes back what the dead one had fetched and never acknowledged, and in the end every
    entry is written and acknowledged. Entries in flight at the kill may be written twice
    (counted, and no more than the pipeline's bound)."""
    import redis
    from redis_consumer import run_node

    with redis.Redis.from_url(redis_url) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(1500):
            pipe.xadd("jobs", {"n": i})
        ids = {x.decode() for x in pipe.execute()}
    out = str(tmp_path / "written.txt")
    node = [sys.executable, str(HERE / "redis_consumer.py"), redis_url, "jobs", "g", "c", out]
    first = subprocess.Popen(node, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        for line in first.stdout:  # synchronised on the node's own progress lines
            if line.startswith("progress") and int(line.split()[1]) >= 300:
                break
        else:
            raise AssertionError("the node ended before it wrote 300 entries")
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
        if first.stdout is not None:
            first.stdout.close()
    before = Path(out).read_text().split()
    assert 300 <= len(before) < 1500
    ok, failed, redelivered = nb.run(run_node, redis_url, "jobs", "g", "c", out)
    # the restarted pipeline handled at least every entry the dead one had not written
    assert failed == 0 and len(ids) - len(set(before)) <= ok <= len(ids)
    written = Path(out).read_text().split()
    assert set(written) == ids  # none lost
    duplicated = len(written) - len(ids)
    assert 0 <= duplicated <= 4 * 10 + 20  # only what was in flight at the kill
    assert redelivered >= duplicated  # taken back by the restarted consumer
    with redis.Redis.from_url(redis_url) as r:
        assert int(r.xpending("jobs", "g")["pending"]) == 0  # every entry acknowledged
    print(f"entries written twice after the SIGKILL: {duplicated}")
