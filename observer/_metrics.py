"""Prometheus metrics of one node, read from the runtime at each scrape (prometheus_client's
custom-collector pattern: nothing is counted twice, nothing runs between scrapes).

Every metric has the label ``node`` (this node's name). Names follow Prometheus' conventions:
``_total`` for counters, base units (bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from numbeam.actors._runtime import Runtime
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

import numbeam as nb

from ._snapshot import message_totals

__all__ = ["NodeCollector", "registry_for"]


class NodeCollector(Collector):
    """The metrics of the runtime `rt`, collected when scraped (from its event loop)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        node = rt.node
        labels = ["node"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([node], value)
            return g

        procs = list(rt._procs.values())
        stats = rt.statistics()
        yield gauge("numbeam_processes", "Live processes of this node.", len(procs))
        yield gauge(
            "numbeam_run_queue_length",
            "Processes woken and waiting for the scheduler to run them.",
            stats["run_queue"],
        )
        yield gauge("numbeam_registered_names", "Locally registered names.", stats["registered"])
        yield gauge("numbeam_timers", "Pending send_after timers.", stats["timers"])
        yield gauge(
            "numbeam_message_queue_length",
            "Messages waiting in all mailboxes.",
            sum(len(p.mailbox) for p in procs if p.mailbox),
        )
        yield gauge(
            "numbeam_message_queue_max",
            "The longest mailbox.",
            max((len(p.mailbox) for p in procs if p.mailbox), default=0),
        )
        got, sent = message_totals(rt)
        c = CounterMetricFamily(
            "numbeam_messages_received", "Messages delivered to processes.", labels=labels
        )
        c.add_metric([node], got)
        yield c
        c = CounterMetricFamily(
            "numbeam_messages_sent", "Messages sent by processes.", labels=labels
        )
        c.add_metric([node], sent)
        yield c

        restarts = CounterMetricFamily(
            "numbeam_supervisor_restarts",
            "Children restarted, per live supervisor (its registered name, else its pid).",
            labels=["node", "supervisor"],
        )
        for pid, n in sorted(_restarts(rt).items(), key=lambda kv: kv[0].id):
            proc = rt._lookup(pid)
            if proc is not None:
                restarts.add_metric([node, proc.name or repr(pid)], n)
        yield restarts

        peers = nb.nodes() if rt.dist is not None else []
        yield gauge("numbeam_node_connections", "Nodes this node is connected to.", len(peers))

        t = nb.tensors.stats()
        tb = GaugeMetricFamily(
            "numbeam_tensor_bytes",
            "Bytes of live tensors held by this node, per device ('cpu': shared memory).",
            labels=["node", "device"],
        )
        tb.add_metric([node, "cpu"], t["bytes"])
        for dev, d in t["devices"].items():
            tb.add_metric([node, dev], d.get("bytes", 0))
        yield tb
        tn = GaugeMetricFamily(
            "numbeam_tensor_buffers",
            "Live tensor buffers held by this node, per device.",
            labels=["node", "device"],
        )
        tn.add_metric([node, "cpu"], t["buffers"])
        for dev, d in t["devices"].items():
            tn.add_metric([node, dev], d.get("buffers", 0))
        yield tn
        yield gauge(
            "numbeam_tensor_reserved_bytes", "Shared memory reserved for tensors.", t["reserved"]
        )
        yield gauge(
            "numbeam_tensor_segments", "Shared-memory segments of this node.", t["segments"]
        )


def _restarts(rt: Runtime) -> dict[Any, int]:
    ext = rt.extensions.get("supervision.restarts")
    return dict(ext) if ext else {}


def registry_for(rt: Runtime) -> CollectorRegistry:
    """A registry of its own for this node (never the process-global default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(rt))
    return registry
