"""Node names: ``name@host:port`` (tcp) or ``name@ipc:///path`` (ipc). A name is its address.

A node's name is all it takes to reach it, so there is no port mapper: parsing a name gives the
ZeroMQ endpoint to connect to. Port 0 (or an ipc name without a path) asks for a free address;
the node's real name, with the port or path it got, is what `nb.node()` returns.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from dataclasses import dataclass

_SHORT = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)\Z")


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A parsed node name."""

    short: str
    transport: str  # "tcp" or "ipc"
    host: str  # tcp: the host or address (IPv6 in brackets); ipc: ""
    port: int  # tcp: 0..65535; ipc: 0
    path: str  # ipc: the socket path, "" for a fresh one; tcp: ""

    @property
    def name(self) -> str:
        if self.transport == "ipc":
            return f"{self.short}@ipc://{self.path}"
        return f"{self.short}@{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint to connect to."""
        if self.transport == "ipc":
            return f"ipc://{self.path}"
        return f"tcp://{self.host}:{self.port}"

    def bind_endpoint(self, listen: str | None) -> str:
        """The endpoint to bind: the name's own address unless `listen` overrides the host."""
        if self.transport == "ipc":
            path = self.path or os.path.join(
                tempfile.gettempdir(), f"numbeam-{self.short}-{secrets.token_hex(6)}.sock"
            )
            return f"ipc://{path}"
        return f"tcp://{listen or self.host}:{self.port}"

    def with_endpoint(self, endpoint: str) -> NodeAddress:
        """This address with the port or path the bound socket really got."""
        if self.transport == "ipc":
            return NodeAddress(self.short, "ipc", "", 0, endpoint[len("ipc://") :])
        return NodeAddress(self.short, "tcp", self.host, int(endpoint.rsplit(":", 1)[1]), "")


def parse_node_name(name: object, *, for_bind: bool = False) -> NodeAddress:
    """Parse a node name; ValueError (TypeError for a non-str) names what is wrong with it.

    ``for_bind`` also accepts a bare short name (``"a"`` means ``a@127.0.0.1:0``: loopback, a
    free port) and port 0; a name to connect to needs a real port or path.
    """
    if not isinstance(name, str):
        raise TypeError(f"a node name must be a str like 'a@127.0.0.1:9100', got {name!r}")
    short, at, addr = name.partition("@")
    if not _SHORT.match(short):
        raise ValueError(
            f"bad node name {name!r}: the part before '@' must be letters, digits, '_', '.', '-'"
        )
    if not at:
        if for_bind:
            return NodeAddress(short, "tcp", "127.0.0.1", 0, "")
        raise ValueError(f"bad node name {name!r}: expected 'name@host:port' or 'name@ipc:///path'")
    if addr.startswith("ipc://"):
        path = addr[len("ipc://") :]
        if not path and not for_bind:
            raise ValueError(f"bad node name {name!r}: an ipc name needs a socket path")
        return NodeAddress(short, "ipc", "", 0, path)
    host, colon, port_s = addr.rpartition(":")
    if not colon or not _HOST.match(host) or not port_s.isdigit() or int(port_s) > 65535:
        raise ValueError(
            f"bad node name {name!r}: expected 'name@host:port' (port 0-65535) "
            "or 'name@ipc:///path'"
        )
    port = int(port_s)
    if port == 0 and not for_bind:
        raise ValueError(f"bad node name {name!r}: port 0 only means 'pick one' when starting")
    return NodeAddress(short, "tcp", host, port, "")
