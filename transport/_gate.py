"""The gate of a node's ROUTER: only a peer that knows the cookie completes ZeroMQ's handshake.

The node handshake (see `_node`) proves the cookie, but it runs over ZeroMQ messages, so before
it ZeroMQ has already accepted the connection and queued whatever frames the peer sends: anyone
who could open a TCP connection could make a node hold or log without bound. So a node's ROUTER
also checks the cookie one layer down, with ZeroMQ's authentication protocol (ZAP):

- The ROUTER is a PLAIN server in a ZAP domain of its own. A connecting node presents as its
  password a timestamp, a fresh nonce and an HMAC-SHA256 of both and the server's node name
  under the cookie (`credentials`); the cookie itself never crosses the wire. The authenticator
  (one thread per OS process, serving the process's ZeroMQ context at ``inproc://zeromq.zap.01``)
  checks the MAC, that the timestamp is within `WINDOW` seconds of its clock and that the nonce
  was not seen before, and answers 200 or 400. libzmq closes a refused connection before it
  delivers a single message, and with ZAP on it refuses ZMTP 1.0/2.0 peers outright (random
  bytes on the port are read as ZMTP 1.0).
- With ``curve=True`` the CURVE handshake is the proof (the server key derives from the
  cookie), and the authenticator accepts it as it is.

What an outsider can still make a node hold: libzmq reads the ZMTP greeting and the handshake
commands before it asks the authenticator, and a command may be as large as the socket's
maximum message size; ``HANDSHAKE_IVL`` (the node's connect_timeout) bounds how long. ZeroMQ
has no per-connection frame limit, so bounding that too needs the receiving socket never to
accept connections (data read on connections the receiver opened): see docs/architecture.md.

`RejectLog` is how the transport logs input it rejects: one line per cause per interval, with
a count, and identities cut short, so a flood cannot turn into a flood of log lines.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

import zmq

__all__ = ["WINDOW", "RejectLog", "credentials", "named", "register", "unregister"]

WINDOW = 300.0  # seconds of clock difference between two nodes' hosts that the gate accepts
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
USERNAME = b"numbeam-1"
_MAC_DOMAIN = b"numbeam-zap-v1"
_NONCE = 16
_TS = 8
_MAC = hashlib.sha256().digest_size


class RejectLog:
    """Counts rejected input per cause and logs at most one line per cause per `interval`.

    The first rejection of a cause is logged at once; later ones are counted and logged with
    the count once `interval` seconds have passed (or at `flush`). Details are cut to
    `DETAIL` characters. Safe to call from any thread.
    """

    DETAIL = 48

    def __init__(
        self, logger: logging.Logger, node: str, interval: float = 10.0, clock: Any = None
    ) -> None:
        self.log = logger
        self.node = node
        self.interval = interval
        self.clock = clock if clock is not None else time.monotonic
        self.total: dict[str, int] = {}  # every rejection so far, per cause
        self._pending: dict[str, list[Any]] = {}  # cause -> [count, first detail, since]
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, cause: str, detail: str = "") -> None:
        now = self.clock()
        with self._lock:
            self.total[cause] = self.total.get(cause, 0) + 1
            pending = self._pending.get(cause)
            if pending is None:
                pending = self._pending[cause] = [0, detail[: self.DETAIL], now]
            pending[0] += 1
            last = self._last.get(cause)
            if last is not None and now - last < self.interval:
                return
            self._last[cause] = now
            del self._pending[cause]
        self._emit(cause, pending, now)

    def flush(self) -> None:
        """Log what was counted and not logged yet."""
        now = self.clock()
        with self._lock:
            pending, self._pending = self._pending, {}
        for cause, p in pending.items():
            self._emit(cause, p, now)

    def _emit(self, cause: str, pending: list[Any], now: float) -> None:
        count, detail, since = pending
        where = f" (e.g. {detail})" if detail else ""
        if count == 1:
            self.log.warning("node %s: rejected %s%s", self.node, cause, where)
        else:
            self.log.warning(
                "node %s: rejected %d x %s in %.0f s%s",
                self.node,
                count,
                cause,
                max(now - since, 0.0),
                where,
            )


def _mac(cookie: bytes, server: str, stamp: bytes, nonce: bytes) -> bytes:
    server_bytes = server.encode()
    msg = b"".join((_MAC_DOMAIN, len(server_bytes).to_bytes(4, "big"), server_bytes, stamp, nonce))
    return hmac.digest(cookie, msg, "sha256")


def credentials(cookie: bytes, server: str) -> tuple[bytes, bytes]:
    """PLAIN ``(username, password)`` with which a node connects to the node named `server`."""
    stamp = int(time.time()).to_bytes(_TS, "big")
    nonce = os.urandom(_NONCE)
    return USERNAME, stamp + nonce + _mac(cookie, server, stamp, nonce)


class _Domain:
    __slots__ = ("cookie", "name", "rejects", "seen")

    def __init__(self, cookie: bytes, name: str, rejects: RejectLog) -> None:
        self.cookie = cookie
        self.name = name
        self.rejects = rejects
        self.seen: OrderedDict[bytes, float] = OrderedDict()  # nonce -> when it may be forgotten

    def check(self, mechanism: bytes, creds: list[bytes], now: float) -> str | None:
        """None if the connection may go on, else why not."""
        if mechanism == b"CURVE":
            return None  # the CURVE handshake proved the cookie-derived server key
        if mechanism != b"PLAIN":
            return f"a connection without credentials ({mechanism.decode(errors='replace')})"
        if len(creds) != 2 or creds[0] != USERNAME or len(creds[1]) != _TS + _NONCE + _MAC:
            return "a connection with malformed credentials"
        pw = creds[1]
        stamp, nonce, mac = pw[:_TS], pw[_TS : _TS + _NONCE], pw[_TS + _NONCE :]
        if not hmac.compare_digest(mac, _mac(self.cookie, self.name, stamp, nonce)):
            return "a connection that does not know the cookie"
        if abs(now - int.from_bytes(stamp, "big")) > WINDOW:
            return f"a connection whose clock is more than {WINDOW:.0f} s off"
        seen = self.seen
        while seen and next(iter(seen.values())) < now:
            seen.popitem(last=False)
        if nonce in seen:
            return "a replayed connection"
        seen[nonce] = now + 2 * WINDOW
        return None


class _Authenticator:
    """Answers libzmq's ZAP requests for every node of this OS process, from its own thread."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.domains: dict[bytes, _Domain] = {}
        self.lock = threading.Lock()
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        self.thread = threading.Thread(
            target=self._run, args=(sock,), name="numbeam-zap", daemon=True
        )
        self.thread.start()

    def _run(self, sock: zmq.Socket[Any]) -> None:
        # (the socket lives as long as the process's context, which is never terminated)
        while True:
            try:
                frames = sock.recv_multipart()
            except zmq.ZMQError:
                return
            version, request_id = frames[0], frames[1] if len(frames) > 1 else b""
            status, why = b"400", "a malformed ZAP request"
            domain = None
            if len(frames) >= 6 and version == b"1.0":
                with self.lock:
                    domain = self.domains.get(frames[2])
                if domain is None:
                    why = "a connection to a node that is closing"
                else:
                    why = domain.check(frames[5], frames[6:], time.time()) or ""
                    status = b"400" if why else b"200"
            if why and domain is not None:
                domain.rejects.note(why, f"from {frames[3].decode(errors='replace')}")
            try:
                sock.send_multipart([b"1.0", request_id, status, why.encode()[:100], b"", b""])
            except zmq.ZMQError:
                return


_authenticators: dict[int, _Authenticator] = {}
_start_lock = threading.Lock()


def register(ctx: zmq.Context[Any], cookie: bytes, rejects: RejectLog) -> bytes:
    """Start gating for one node: returns the ZAP domain to set on its ROUTER before binding.
    Call `named` once the node's real name is known."""
    with _start_lock:
        auth = _authenticators.get(id(ctx))
        if auth is None:
            auth = _authenticators[id(ctx)] = _Authenticator(ctx)
    domain = secrets.token_hex(8).encode()
    with auth.lock:
        auth.domains[domain] = _Domain(cookie, "", rejects)
    return domain


def named(ctx: zmq.Context[Any], domain: bytes, name: str) -> None:
    """The node of `domain` is now called `name` (what clients' credentials are made for)."""
    auth = _authenticators[id(ctx)]
    with auth.lock:
        auth.domains[domain].name = name


def unregister(ctx: zmq.Context[Any], domain: bytes) -> None:
    """Stop gating for a node that closes: its connections are refused from now on."""
    auth = _authenticators.get(id(ctx))
    if auth is not None:
        with auth.lock:
            auth.domains.pop(domain, None)
