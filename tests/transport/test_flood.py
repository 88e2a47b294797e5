"""A node flooded by connections without the cookie holds and logs little, and keeps answering
an authenticated peer (bench/flood.py, run short: node B is a real `numbeam node` process)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import flood

RSS_BOUND = 64 << 20  # the node's peak RSS may grow by this much at most (measured: < 1 MB)
LOG_BOUND = 4096  # bytes of log for the whole run (measured: under 1 KB)


def test_a_flood_without_the_cookie_leaves_rss_and_log_bounded_while_the_node_answers():
    figures = flood.run(seconds=3.0, connections=4, junk=100_000)
    assert figures["flood_written_bytes"] > 100 * flood.FRAME  # it was a flood
    assert figures["rss_growth_bytes"] < RSS_BOUND, figures
    assert figures["log_bytes"] < LOG_BOUND, figures
    assert figures["round_trips"] > 10, figures  # answered all along (each waited for)
    assert figures["rtt_max_ms"] < 5000, figures
    # 100k junk frames from a connection that never authenticates: a few aggregated lines.
    assert "99999 x a frame from an unauthenticated connection" in figures["log_tail"]
