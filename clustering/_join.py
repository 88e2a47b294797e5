"""`nb.cluster.join(spec)`: a process that keeps this node connected to the nodes a spec names.

It polls its strategy (a static list, a hosts file, DNS records, the Slurm job's hosts) every
`interval` seconds, connects to the names that are new, watches each connected one with
`nb.monitor_node`, and reconnects with exponential backoff (0.5 s doubling to 30 s, with
jitter) after one is lost or cannot be reached. A name that the spec stops naming is forgotten:
no more reconnects, and it is disconnected if it is still connected. It never connects to its
own node. Joins and losses are logged once each, at INFO; a node that stays unreachable is
logged once, when it first fails.

With ``notify=pid``, `pid` gets ``("nodeup", name)`` when a node of the spec is connected and
``("nodedown", name, reason)`` when it is lost or forgotten (reason ``"forgotten"``), as Erlang's
``net_kernel:monitor_nodes`` sends them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from typing import Any

from numbeam.transport._names import parse_node_name

import numbeam as nb

from ._strategies import LookupFailed, Strategy, parse_spec

__all__ = ["join"]

log = logging.getLogger("numbeam.cluster")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0


def backoff_delay(failures: int) -> float:
    """Seconds before attempt number ``failures + 1``: 0.5 s doubling up to 30 s, +-20 %."""
    base = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** max(0, failures - 1))
    return base * random.uniform(0.8, 1.2)


def join(
    spec: str,
    *,
    interval: float | None = None,
    nameserver: str | None = None,
    notify: nb.Pid | None = None,
) -> nb.Pid:
    """Keep this node connected to the nodes `spec` names; returns the pid of the process that
    does it (stop it with ``nb.exit(pid, "shutdown")``; it also stops with the node).

    `spec`: ``static:a@h:p,b@h:p``; ``file:PATH`` (one node name per line, re-read when it
    changes); ``dns:NAME:PORT`` (the A/AAAA records of NAME, each a node
    ``<basename>@<address>:PORT`` where basename is this node's short name, or
    ``dns:BASENAME@NAME:PORT``); ``slurm`` (the hosts of ``SLURM_JOB_NODELIST``, each a node
    ``<basename>@<host>:<this node's port>``, or ``slurm:PORT``).

    `interval`: seconds between polls (default 5 for dns and static, 1 for file).
    `nameserver`: ``host:port`` of a DNS server to ask for the records directly, instead of
    the system's resolver (also ``NUMBEAM_DNS_NAMESERVER``). `notify`: a pid that gets
    ``("nodeup", name)`` and ``("nodedown", name, reason)``.

    Raises ValueError (TypeError) for a malformed spec or option, RuntimeError on a local
    runtime (one started without ``node=``).
    """
    own = nb.node()
    if own == "nonode@nohost":  # (what nb.node() is on a local runtime)
        raise RuntimeError(
            "nb.cluster.join(): this runtime is local; start it with a node name, e.g. "
            "nb.Runtime(node='a@10.0.0.5:9100')"
        )
    if notify is not None and not isinstance(notify, nb.Pid):
        raise TypeError(f"nb.cluster.join(notify=...) takes a Pid, got {notify!r}")
    strategy = parse_spec(spec, own, interval=interval, nameserver=nameserver)
    return nb.spawn(_joiner, strategy, notify)


def _own_hosts_blocking(own: str) -> set[str]:
    """The host strings this node could appear under: its own, this machine's names, the
    addresses those resolve to, and Slurm's name for this node (blocking lookups)."""
    addr = parse_node_name(own)
    hosts = {addr.host, socket.gethostname(), socket.getfqdn()}
    slurm = os.environ.get("SLURMD_NODENAME")
    if slurm:
        hosts.add(slurm)
    for h in list(hosts):
        try:
            infos = socket.getaddrinfo(h.strip("[]"), None)
        except (OSError, UnicodeError):
            continue
        for info in infos:
            ip = str(info[4][0])
            hosts.add(f"[{ip}]" if ":" in ip else ip)
    return {h for h in hosts if h}


async def _own_hosts(own: str) -> set[str]:
    """`_own_hosts_blocking` in a thread (name lookups block), giving up on them after a few
    seconds: then only the node's own host and SLURMD_NODENAME count."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_own_hosts_blocking, own), 5.0)
    except TimeoutError:
        log.warning("cluster: looking up this machine's own names and addresses timed out")
        return {parse_node_name(own).host, os.environ.get("SLURMD_NODENAME") or ""} - {""}


class _Joiner:
    def __init__(self, strategy: Strategy, notify: nb.Pid | None, own_hosts: set[str]) -> None:
        self.strategy = strategy
        self.notify = notify
        self.me = nb.self()
        self.own = parse_node_name(nb.node())
        self.own_hosts = own_hosts
        self.wanted: set[str] = set()
        self.up: set[str] = set()  # wanted names we saw connected (and monitor)
        self.connecting: dict[str, asyncio.Task[None]] = {}
        self.failures: dict[str, int] = {}  # consecutive failed attempts per name
        self.retry_at: dict[str, float] = {}
        self.lookup_error: str | None = None
        self.loop = asyncio.get_running_loop()

    def is_self(self, name: str) -> bool:
        addr = parse_node_name(name)
        if addr.name == self.own.name:
            return True
        return (
            addr.transport == "tcp"
            and addr.short == self.own.short
            and addr.port == self.own.port
            and addr.host in self.own_hosts
        )

    async def poll(self) -> None:
        try:
            names = await self.strategy.poll()
        except LookupFailed as e:
            if str(e) != self.lookup_error:
                log.warning(
                    "cluster %s: %s (keeping the nodes known so far)", self.strategy.spec, e
                )
                self.lookup_error = str(e)
            return
        if self.lookup_error is not None:
            log.info("cluster %s: lookups work again", self.strategy.spec)
            self.lookup_error = None
        names = {n for n in names if not self.is_self(n)}
        for gone in self.wanted - names:
            self.forget(gone)
        for new in names - self.wanted:
            self.wanted.add(new)
            self.retry_at[new] = 0.0
        # Nodes met through others (connections are transitive) count as joined too.
        for name in set(nb.nodes()) & (self.wanted - self.up):
            self.joined(name)

    def forget(self, name: str) -> None:
        self.wanted.discard(name)
        self.retry_at.pop(name, None)
        self.failures.pop(name, None)
        task = self.connecting.pop(name, None)
        if task is not None:
            task.cancel()
        if name in self.up:
            self.up.discard(name)
            nb.monitor_node(name, False)
            log.info(
                "cluster %s: %s is gone from the spec; disconnecting", self.strategy.spec, name
            )
            nb.disconnect(name)
            self.tell(("nodedown", name, "forgotten"))

    def tell(self, msg: tuple[Any, ...]) -> None:
        if self.notify is not None:
            nb.send(self.notify, msg)

    def joined(self, name: str) -> None:
        self.up.add(name)
        self.retry_at.pop(name, None)
        if self.failures.pop(name, 0):
            log.info("cluster %s: %s joined (after retries)", self.strategy.spec, name)
        else:
            log.info("cluster %s: %s joined", self.strategy.spec, name)
        nb.monitor_node(name)
        self.tell(("nodeup", name))

    def lost(self, name: str, reason: Any) -> None:
        if name not in self.up:
            return  # a monitor of a name we forgot, or a second one
        self.up.discard(name)
        nb.monitor_node(name, False)
        self.failures[name] = 1
        delay = backoff_delay(1)
        self.retry_at[name] = self.loop.time() + delay
        log.info(
            "cluster %s: lost %s (%s); reconnecting with backoff",
            self.strategy.spec,
            name,
            reason,
        )
        self.tell(("nodedown", name, reason))

    def start_due(self) -> None:
        now = self.loop.time()
        for name, at in list(self.retry_at.items()):
            if at <= now and name not in self.connecting and name not in self.up:
                del self.retry_at[name]  # `attempted` sets it again if this one fails
                self.connecting[name] = self.loop.create_task(self.attempt(name))

    async def attempt(self, name: str) -> None:
        try:
            ok = await nb.connect(name)
        except Exception as e:  # e.g. the node is shutting down
            log.debug("cluster %s: connecting to %s failed: %r", self.strategy.spec, name, e)
            ok = False
        nb.send(self.me, ("numbeam.cluster.attempt", name, ok))

    def attempted(self, name: str, ok: bool) -> None:
        self.connecting.pop(name, None)
        if name not in self.wanted:
            return
        if ok:
            if name not in self.up:
                self.joined(name)
            return
        n = self.failures.get(name, 0) + 1
        self.failures[name] = n
        delay = backoff_delay(n)
        self.retry_at[name] = self.loop.time() + delay
        level = logging.WARNING if n == 1 else logging.DEBUG
        log.log(
            level,
            "cluster %s: cannot reach %s (attempt %d); retrying with backoff",
            self.strategy.spec,
            name,
            n,
        )

    def next_wake(self, next_poll: float) -> float:
        return min([next_poll, *self.retry_at.values()])

    async def run(self) -> None:
        next_poll = 0.0
        try:
            while True:
                now = self.loop.time()
                if now >= next_poll:
                    await self.poll()
                    next_poll = self.loop.time() + self.strategy.interval
                self.start_due()
                wait = max(0.0, self.next_wake(next_poll) - self.loop.time())
                try:
                    msg = await nb.receive(timeout=wait)
                except TimeoutError:
                    continue
                if type(msg) is nb.NodeDown:
                    self.lost(msg.name, msg.reason)
                elif type(msg) is tuple and len(msg) == 3 and msg[0] == "numbeam.cluster.attempt":
                    self.attempted(msg[1], msg[2])
        finally:
            for task in self.connecting.values():
                task.cancel()
            self.strategy.close()


async def _joiner(strategy: Strategy, notify: nb.Pid | None) -> None:
    own_hosts = await _own_hosts(nb.node())
    await _Joiner(strategy, notify, own_hosts).run()
