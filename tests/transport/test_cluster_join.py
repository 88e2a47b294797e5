"""`nb.cluster.join` and `numbeam node --join` with real node processes on loopback.

The test's own node joins with ``notify=`` its own pid, so each test waits for the
``("nodeup", name)`` and ``("nodedown", name, reason)`` messages the joiner sends, never on
sleeps. The DNS strategy asks a real DNS server (dnslib's) that the test runs on a free local
port and whose records it changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from cluster import COOKIE
from conftest import T, node_runtime
from numbeam.actors._runtime import _rt

import numbeam as nb
from numbeam.__main__ import main


def _nodeup(name: str) -> Any:
    return lambda m: m == ("nodeup", name)


def _nodedown(name: str) -> Any:
    return lambda m: type(m) is tuple and len(m) == 3 and m[:2] == ("nodedown", name)


def _write(path: Path, text: str) -> None:
    """Replace the file at once, as config management does (a new inode, renamed over)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_static_join_connects_reconnects_after_a_loss_and_logs_each_once(
    nodes, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="numbeam.cluster")
    b = await nodes("b")
    async with node_runtime():
        me = nb.node()
        # Its own name in the spec is skipped: it never connects to itself.
        nb.cluster.join(f"static:{b.name},{me}", notify=nb.self(), interval=0.2)
        await nb.receive(_nodeup(b.name), timeout=T)
        assert nb.nodes() == [b.name]
        b.kill(signal.SIGKILL)
        await b.wait()
        _, _, reason = await nb.receive(_nodedown(b.name), timeout=T)
        assert reason in ("connection_closed", "noconnection")
        b2 = await nodes(b.name)  # the same name again: the joiner reconnects by itself
        await nb.receive(_nodeup(b2.name), timeout=T)
        assert nb.nodes() == [b.name]
        msgs = [r.getMessage() for r in caplog.records if r.name == "numbeam.cluster"]
        assert sum("lost" in m for m in msgs) == 1
        assert sum("joined" in m for m in msgs) == 2  # the join and the rejoin, once each


async def test_an_unreachable_node_is_retried_with_backoff_and_reported_once(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG, logger="numbeam.cluster")
    async with node_runtime(connect_timeout=0.5):
        ghost = "ghost@127.0.0.1:9"  # nothing listens on the discard port
        pid = nb.cluster.join(f"static:{ghost}", interval=0.1)
        ref = nb.monitor(pid)
        # Wait until it has tried twice (a debug line after the first one's warning).
        async with asyncio.timeout(T):
            while sum("cannot reach" in r.getMessage() for r in caplog.records) < 2:
                with pytest.raises(TimeoutError):
                    await nb.receive(lambda m: m == ref, timeout=0.1)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in warnings] == [
            f"cluster static:{ghost}: cannot reach {ghost} (attempt 1); retrying with backoff"
        ]
        nb.exit(pid, "shutdown")
        down = await nb.receive(nb.Down, timeout=T)
        assert down.reason == "shutdown"


async def test_file_strategy_follows_the_hosts_file(nodes, tmp_path: Path):
    b = await nodes("b")
    hosts = tmp_path / "hosts"
    async with node_runtime():
        _write(hosts, f"# the cluster\n{nb.node()}\n")
        nb.cluster.join(f"file:{hosts}", notify=nb.self(), interval=0.05)
        _write(hosts, f"# the cluster\n{nb.node()}\n{b.name}  # added later\n")
        await nb.receive(_nodeup(b.name), timeout=T)
        assert nb.nodes() == [b.name]
        _write(hosts, f"{nb.node()}\n")
        assert await nb.receive(_nodedown(b.name), timeout=T) == ("nodedown", b.name, "forgotten")
        assert nb.nodes() == []


class _Records:
    """A dnslib resolver answering A queries for one name from a set the test changes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: set[str] = set()
        self.queries = 0
        self.lock = threading.Condition()

    def wait_queries(self, n: int) -> None:
        """Block until the server has answered `n` queries (`T` at most)."""
        with self.lock:
            assert self.lock.wait_for(lambda: self.queries >= n, T), self.queries

    def resolve(self, request: Any, handler: Any) -> Any:
        from dnslib import QTYPE, RCODE, RR, A

        reply = request.reply()
        q = request.q
        if str(q.qname).rstrip(".") != self.name:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        with self.lock:
            addresses = sorted(self.addresses)
        if q.qtype == QTYPE.A:
            for a in addresses:
                reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(a), ttl=1))
        with self.lock:
            self.queries += 1
            self.lock.notify_all()
        return reply


@pytest.fixture(scope="module")
def _dns_server_of_module():
    from dnslib.server import DNSLogger, DNSServer

    records = _Records("numbeam.test")
    quiet = DNSLogger(logf=lambda line: None)
    server = DNSServer(records, address="127.0.0.1", port=0, logger=quiet)
    server.start_thread()
    try:
        yield records, f"127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.stop()
        server.server.server_close()


@pytest.fixture
def dns_server(_dns_server_of_module):
    """A real DNS server on a free local port: ``(records, "127.0.0.1:PORT")``; the test
    sets ``records.addresses``, the A records of ``numbeam.test``."""
    records, nameserver = _dns_server_of_module
    with records.lock:
        records.addresses = set()
        records.queries = 0
    return records, nameserver


async def test_dns_strategy_joins_addresses_as_they_appear_and_forgets_gone_ones(nodes, dns_server):
    records, nameserver = dns_server
    b = await nodes("b")
    port = b.name.rsplit(":", 1)[1]
    async with node_runtime():
        nb.cluster.join(
            f"dns:b@numbeam.test:{port}", nameserver=nameserver, notify=nb.self(), interval=0.1
        )
        # No records yet: nothing to join. Then the "pod" becomes ready.
        records.addresses = {"127.0.0.1"}
        await nb.receive(_nodeup(b.name), timeout=T)
        assert nb.nodes() == [b.name]
        records.addresses = set()
        assert await nb.receive(_nodedown(b.name), timeout=T) == ("nodedown", b.name, "forgotten")


async def test_dns_strategy_never_connects_to_itself(dns_server, caplog):
    caplog.set_level(logging.INFO, logger="numbeam.cluster")
    records, nameserver = dns_server
    records.addresses = {"127.0.0.1"}
    async with node_runtime("t"):
        port = nb.node().rsplit(":", 1)[1]
        pid = nb.cluster.join(f"dns:numbeam.test:{port}", nameserver=nameserver, interval=0.05)
        # Two polls answered (A and AAAA each): the first one's names have been handled (a
        # connection to itself would be logged as a join).
        await asyncio.to_thread(records.wait_queries, 4)
        assert nb.is_alive(pid)
        assert nb.nodes() == []
        assert not [r for r in caplog.records if r.name == "numbeam.cluster"]


async def test_slurm_strategy_with_the_variables_srun_sets(nodes, monkeypatch):
    # Two "hosts" of the job, 127.0.0.1 and 127.0.0.2 (both loopback), one node each on one
    # port, named alike: `numbeam node --name n@$SLURMD_NODENAME:PORT --join slurm`.
    async with node_runtime("n"):
        port = nb.node().rsplit(":", 1)[1]
        b = await nodes(f"n@127.0.0.2:{port}")
        monkeypatch.setenv("SLURM_JOB_NODELIST", "127.0.0.[1-2]")
        monkeypatch.setenv("SLURMD_NODENAME", "127.0.0.1")
        nb.cluster.join("slurm", notify=nb.self(), interval=0.2)
        await nb.receive(_nodeup(b.name), timeout=T)
        assert nb.nodes() == [b.name]


async def test_numbeam_node_join_flag_with_the_system_resolver(nodes):
    async with node_runtime("t"):
        up: asyncio.Queue[str] = asyncio.Queue()
        _rt().dist.node_up_hooks.append(up.put_nowait)  # told when a node connects to us
        port = nb.node().rsplit(":", 1)[1]
        # No nameserver: the system's resolver (getaddrinfo) says where localhost is.
        b = await nodes(
            "b",
            extra_args=("--join", f"dns:t@localhost:{port}"),
            env={"NUMBEAM_DNS_NAMESERVER": ""},
        )
        assert await asyncio.wait_for(up.get(), T) == b.name


def test_numbeam_node_with_a_bad_join_spec_exits_with_a_message(capsys, monkeypatch):
    monkeypatch.setenv("NUMBEAM_COOKIE", COOKIE)
    assert main(["node", "--name", "b@127.0.0.1:0", "--join", "dns:numbeam"]) == 1
    out, err = capsys.readouterr()
    assert "bad cluster spec 'dns:numbeam': expected 'dns:NAME:PORT'" in err
    assert "ready" not in out
