"""Where a cluster's node names come from: a spec such as ``static:a@h:1,b@h:2``,
``file:PATH``, ``dns:NAME:PORT`` or ``slurm``, parsed into a strategy whose `poll` returns the
names it names now.

`poll` raises `LookupFailed` when it cannot tell (a DNS server that does not answer, a file
that cannot be read): the caller then keeps what it knew, rather than forgetting every node
because of one failed lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from numbeam.transport._names import parse_node_name

from ._hostlist import expand_hostlist

__all__ = ["LookupFailed", "Strategy", "parse_spec"]

DNS_INTERVAL = 5.0  # seconds between DNS queries, as libcluster's DNS poll strategy
FILE_INTERVAL = 1.0  # seconds between looks at a hosts file's modification time
STATIC_INTERVAL = 5.0  # nothing to re-read: only how often lost nodes are looked at


class LookupFailed(Exception):
    """A strategy could not find out its node names this time."""


def _node_name(short: str, host: str, port: int) -> str:
    """``short@host:port``, with an IPv6 address in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return parse_node_name(f"{short}@{host}:{port}").name


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad cluster spec {spec!r}: {text!r} is not a port number (1-65535)")
    return int(text)


class Strategy:
    """Base class: `poll` returns the set of node names the spec names now."""

    spec: str
    interval: float

    async def poll(self) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what the strategy holds."""


@dataclass
class Static(Strategy):
    spec: str
    names: frozenset[str]
    interval: float = STATIC_INTERVAL

    async def poll(self) -> set[str]:
        return set(self.names)


def _parse_names(lines: list[str], where: str) -> set[str]:
    names = set()
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            names.add(parse_node_name(line).name)
        except ValueError as e:
            raise ValueError(f"{where}, line {n}: {e}") from None
    return names


@dataclass
class HostsFile(Strategy):
    """One node name per line; blank lines and ``#`` comments are ignored. The file is read
    again whenever its modification time, size or inode changes (editors and config
    management replace files by renaming a new one over them)."""

    spec: str
    path: Path
    interval: float = FILE_INTERVAL
    _stamp: tuple[int, int, int] | None = None
    _names: set[str] = field(default_factory=set)

    async def poll(self) -> set[str]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                text = self.path.read_text()
                self._names = _parse_names(text.splitlines(), str(self.path))
                self._stamp = stamp
        except FileNotFoundError:
            raise LookupFailed(f"hosts file {self.path} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise LookupFailed(f"hosts file {self.path}: {e}") from None
        return set(self._names)


@dataclass
class Dns(Strategy):
    """The A and AAAA records of `name`, each address a node ``basename@address:port``.

    By default the system's resolver answers (``getaddrinfo``: the hosts file, then DNS with
    ``/etc/resolv.conf``'s search domains, as a Kubernetes pod has them). With `nameserver`
    (``(host, port)``) the records are asked of that DNS server directly, with dnspython.
    """

    spec: str
    name: str
    port: int
    basename: str
    nameserver: tuple[str, int] | None = None
    interval: float = DNS_INTERVAL
    _resolver: Any = None

    @property
    def _lifetime(self) -> float:
        return max(1.0, min(self.interval, 5.0))

    async def poll(self) -> set[str]:
        if self.nameserver is None:
            addresses = await self._system_lookup()
        else:
            addresses = await self._server_lookup(self.nameserver)
        return {_node_name(self.basename, a, self.port) for a in addresses}

    async def _system_lookup(self) -> set[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._lifetime * 2):
                infos = await loop.getaddrinfo(
                    self.name, self.port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
                )
        except socket.gaierror as e:
            if e.errno in _NO_SUCH_NAME:
                return set()  # no such name (yet): a headless Service with no ready pod
            raise LookupFailed(f"looking up {self.name}: {e}") from None
        except (TimeoutError, OSError, UnicodeError) as e:
            raise LookupFailed(f"looking up {self.name}: {e!r}") from None
        return {str(info[4][0]).partition("%")[0] for info in infos}

    async def _server_lookup(self, nameserver: tuple[str, int]) -> set[str]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        if self._resolver is None:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [nameserver[0]]
            self._resolver.port = nameserver[1]
            self._resolver.lifetime = self._lifetime
        addresses: set[str] = set()
        for rdtype in ("A", "AAAA"):
            # In a task of its own: a cancelled dnspython lookup sometimes swallows the
            # cancellation (the caller would then go on polling after being killed), so the
            # caller waits for the task without being cancellable through it.
            lookup = asyncio.ensure_future(
                self._resolver.resolve(self.name, rdtype, raise_on_no_answer=False)
            )
            try:
                await asyncio.wait({lookup})
            except asyncio.CancelledError:
                lookup.cancel()
                raise
            try:
                answer = lookup.result()
            except dns.resolver.NXDOMAIN:
                continue  # no such name (yet): a headless Service with no ready pod
            except dns.exception.DNSException as e:
                raise LookupFailed(f"DNS lookup of {self.name} ({rdtype}): {e}") from None
            addresses.update(r.address for r in answer)
        return addresses


# getaddrinfo's answers for a name that has no address (as opposed to a failed lookup)
_NO_SUCH_NAME = {
    getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, n)
}


def _nameserver(text: str, spec: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"cluster spec {spec!r}: bad DNS nameserver {text!r}, expected 'host:port'"
        )
    return host.strip("[]"), int(port)


def _slurm_names(basename: str, port: int, spec: str) -> frozenset[str]:
    hostlist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not hostlist:
        raise ValueError(
            f"cluster spec {spec!r}: SLURM_JOB_NODELIST is not set (not inside a Slurm job?)"
        )
    return frozenset(_node_name(basename, h, port) for h in expand_hostlist(hostlist))


def parse_spec(
    spec: str,
    own_name: str,
    *,
    interval: float | None = None,
    nameserver: str | None = None,
) -> Strategy:
    """The strategy for `spec`, for the node `own_name` (its short name is the basename of
    the names that dns and slurm build, its port their default port).

    Raises ValueError naming what is wrong with a malformed spec, TypeError for a non-str.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a cluster spec must be a str like 'dns:numbeam:9100', got {spec!r}")
    kind, _, rest = spec.partition(":")
    own = parse_node_name(own_name)
    strategy: Strategy
    if kind == "static":
        names = [n.strip() for n in rest.split(",") if n.strip()]
        if not names:
            raise ValueError(f"bad cluster spec {spec!r}: 'static:' needs node names")
        try:
            parsed = frozenset(parse_node_name(n).name for n in names)
        except ValueError as e:
            raise ValueError(f"bad cluster spec {spec!r}: {e}") from None
        strategy = Static(spec, parsed)
    elif kind == "file":
        if not rest:
            raise ValueError(f"bad cluster spec {spec!r}: 'file:' needs a path")
        strategy = HostsFile(spec, Path(rest).expanduser())
    elif kind == "dns":
        # dns:NAME:PORT, or dns:BASENAME@NAME:PORT for nodes named unlike this one
        target, colon, port_s = rest.rpartition(":")
        if not colon or not target:
            raise ValueError(f"bad cluster spec {spec!r}: expected 'dns:NAME:PORT'")
        basename, at, host = target.rpartition("@")
        if not at:
            basename, host = own.short, target
        try:
            parse_node_name(f"{basename}@{host}:1")
        except ValueError:
            raise ValueError(
                f"bad cluster spec {spec!r}: {target!r} is not a DNS name (or basename@name)"
            ) from None
        server = nameserver or os.environ.get("NUMBEAM_DNS_NAMESERVER") or None
        strategy = Dns(
            spec,
            host,
            _port(port_s, spec),
            basename,
            None if server is None else _nameserver(server, spec),
        )
    elif kind == "slurm":
        # slurm, or slurm:PORT when the nodes listen on another port than this one
        port = _port(rest, spec) if rest else own.port
        if own.transport != "tcp" or port == 0:
            raise ValueError(
                f"cluster spec {spec!r}: this node ({own_name}) has no tcp port the other "
                "nodes would share; name it name@host:PORT or give slurm:PORT"
            )
        strategy = Static(spec, _slurm_names(own.short, port, spec))
    else:
        raise ValueError(
            f"bad cluster spec {spec!r}: expected static:NAMES, file:PATH, dns:NAME:PORT or slurm"
        )
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValueError(f"cluster poll interval must be a number > 0, got {interval!r}")
        strategy.interval = float(interval)
    return strategy
