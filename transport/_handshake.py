"""The handshake between nodes, both sides of it (the `Handshake` part of `Distribution`).

Each node binds one ROUTER socket; to talk to a peer it connects one DEALER to the peer's
ROUTER. On that DEALER -> ROUTER connection, frames ``[MAGIC, msgpack]``, as Erlang's
distribution handshake but with HMAC-SHA256, so the cookie never crosses the wire:

1. client -> server ``["hello", client_name, creation, nonce_c, spawn_slot]``
2. server -> client ``["challenge", server_name, creation, nonce_s, sign(server, nonce_c)]``
3. client checks the server's proof, then ``["auth", sign(client, nonce_s), host, hidden?]``
4. server checks it: ``["welcome", its connected nodes, host]`` or ``["denied", why]``.

``host`` says how to pass descriptors to the node if it is on this host (tensors then cross as
handles to shared memory); a trailing ``True`` in ``auth`` marks a hidden node (Erlang's
``-hidden``): not in `nodes()`, introduced to nobody. A server that authenticated a client
connects back to it (`Distribution._peer`), so each direction has its own channel.

The client side comes first (connect, send a step, read the replies, watch the connection),
then the server side (steps that arrive on the ROUTER before a connection is authenticated).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgpack
import zmq
from numbeam.tensors._share import same_host
from zmq.utils.monitor import parse_monitor_message

from . import _gate
from ._cookie import new_nonce, sign, verify
from ._names import parse_node_name
from ._ops import (
    _CONNECTING,
    _EVENTS,
    _NOBLOCK,
    _POLLIN,
    _POLLOUT,
    _UP,
    HANDSHAKE_FRAME,
    MAGIC,
)
from ._sockets import _monitor_address, _zmq_context, heartbeats
from ._state import Peer, State, _Incoming

log = logging.getLogger("numbeam.transport")


class Handshake(State):
    """Both sides of the handshake, and the client connection's socket and monitor."""

    # -- client side: our DEALER to the peer's ROUTER ------------------------------------------

    def _start_connect(self, peer: Peer) -> None:
        if peer.state != _CONNECTING or peer.deferred:
            return  # given up before it started (the node is closing), or not listening yet
        sock = _zmq_context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, int(self.opts.shutdown_timeout * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # a lost connection is a lost node, not a retry
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # the server only sends handshake replies
        heartbeats(sock, self.opts)
        if self.curve is not None:
            sock.curve_serverkey = self.curve[0]
            pub, sec = zmq.curve_keypair()
            sock.curve_publickey = pub
            sock.curve_secretkey = sec
        else:
            sock.plain_username, sock.plain_password = _gate.credentials(self.cookie, peer.name)
        peer.sock = sock
        peer.handle = sock.underlying
        peer.mon = sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            _monitor_address(),
        )
        sock.connect(peer.addr.endpoint)
        peer.timer = self.loop.call_later(self.opts.connect_timeout, self._connect_timeout, peer)
        peer.nonce = new_nonce()
        self._handshake_send(peer, [b"hello", self.name, self.creation, peer.nonce, peer.slot])
        self.loop.add_reader(sock.FD, self._on_dealer, peer)
        self.loop.add_reader(peer.mon.FD, self._on_monitor, peer)
        # Drain both once, to arm their edge-triggered ZMQ_FDs; this may already find the
        # connection refused, and take the peer down.
        self._on_monitor(peer)
        self._check_events(peer)

    def _connect_timeout(self, peer: Peer) -> None:
        if peer.state == _CONNECTING:
            log.warning(
                "node %s: no handshake with %s within the connect timeout", self.name, peer.name
            )
            self._node_down(peer, "noconnection")

    def _check_events(self, peer: Peer) -> None:
        # After a send, ZMQ_FD may not fire for what is already readable: look now.
        sock = peer.sock
        if sock is not None and sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            self.loop.call_soon(self._on_dealer, peer)

    def _handshake_send(self, peer: Peer, msg: list[Any]) -> None:
        """Send a handshake step; if ZeroMQ cannot take it yet, `_on_dealer` sends it later."""
        peer.handshake_out = [MAGIC, msgpack.packb(msg)]
        self._handshake_retry(peer)

    def _handshake_retry(self, peer: Peer) -> None:
        if peer.handshake_out is None or peer.sock is None:
            return
        try:
            peer.sock.send_multipart(peer.handshake_out, _NOBLOCK)
        except zmq.Again:
            return  # no connection to queue it on yet: the DEALER's FD will fire
        peer.handshake_out = None
        self._check_events(peer)

    def _on_dealer(self, peer: Peer) -> None:
        """Readable DEALER: handshake replies from the server; writable: send what waited."""
        sock = peer.sock
        if sock is None:
            return
        if peer.handshake_out is not None:
            self._handshake_retry(peer)
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            self._handshake_reply(peer, frames)
            if peer.sock is None:
                return
        if peer.state == _UP and peer.sealed and sock.getsockopt(_EVENTS) & _POLLOUT:  # type: ignore[operator]
            self._flush_peer(peer)

    def _handshake_reply(self, peer: Peer, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2 or frames[0] != MAGIC:
                raise ValueError("not a handshake frame")
            msg = msgpack.unpackb(frames[1], raw=False)
            kind = msg[0]
        except Exception:
            log.warning(
                "node %s: dropped a malformed handshake reply from %s", self.name, peer.name
            )
            return
        if kind == "bye_ack":
            if peer.bye_waiter is not None and not peer.bye_waiter.done():
                peer.bye_waiter.set_result(None)
            return
        if peer.state != _CONNECTING:
            return
        if kind == "challenge" and len(msg) == 5:
            _, server_name, creation, nonce_s, proof = msg
            if server_name != peer.name:
                log.error(
                    "node %s: connected to %s, but that node calls itself %r",
                    self.name,
                    peer.name,
                    server_name,
                )
                self._node_down(peer, "noconnection")
                return
            if not verify(self.cookie, b"server", peer.nonce, server_name, proof):
                log.error(
                    "node %s: %s failed to prove the cookie (different cookies?)",
                    self.name,
                    peer.name,
                )
                self._node_down(peer, "noconnection")
                return
            if type(creation) is not int or type(nonce_s) is not bytes:
                self._node_down(peer, "noconnection")
                return
            peer.creation = creation
            proof = sign(self.cookie, b"client", nonce_s, self.name)
            auth: list[Any] = [b"auth", proof, self.host]
            if self.is_hidden:  # so that it introduces us to nobody (Erlang's -hidden)
                auth.append(True)
            self._handshake_send(peer, auth)
        elif kind == "welcome" and len(msg) in (2, 3):
            if len(msg) == 3 and self.host is not None:
                found = same_host(self.host, msg[2])
                if found is not None:
                    peer.fd_address = found[1]
            self._node_up(peer, msg[1])
        elif kind == "denied":
            log.error(
                "node %s: %s refused the connection: %s",
                self.name,
                peer.name,
                msg[1] if len(msg) > 1 else "?",
            )
            self._node_down(peer, "noconnection")

    def _on_monitor(self, peer: Peer) -> None:
        mon = peer.mon
        if mon is None:
            return
        while True:
            try:
                raw = mon.recv_multipart(zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return
            event = parse_monitor_message(raw)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.error(
                    "node %s: %s refused the connection: wrong cookie (different cookies?)",
                    self.name,
                    peer.name,
                )
                self._node_down(peer, "noconnection")
                return
            if event & (zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED):
                self._node_down(peer, "connection_closed" if peer.state == _UP else "noconnection")
                return

    # -- server side: steps from connections to our ROUTER not authenticated yet ---------------

    def _on_router_monitor(self) -> None:
        mon = self.router_mon
        assert mon is not None
        while True:
            try:
                raw = mon.recv_multipart(zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return
            ev = parse_monitor_message(raw)
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self.rejects.note("a connection that broke the ZMTP protocol")
            elif ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self.rejects.note("a connection that did not finish the ZMTP handshake")
            else:
                log.debug(
                    "node %s: an incoming connection closed (by the peer, or for a "
                    "frame over max_message_size)",
                    self.name,
                )

    def _on_handshake(
        self, ident: bytes, inc: _Incoming | None, magic: bytes, extra: list[Any]
    ) -> None:
        try:
            if magic != MAGIC or len(extra) != 1:
                raise ValueError("not a handshake frame")
            if len(extra[0]) > HANDSHAKE_FRAME:
                raise ValueError(f"a handshake frame over {HANDSHAKE_FRAME} bytes")
            msg = msgpack.unpackb(extra[0].bytes, raw=False)
            if type(msg) is not list or not msg:
                raise ValueError("not a handshake message")
            kind = msg[0]
            if kind == b"hello" and inc is None:
                _, name, creation, nonce_c, slot = msg
                addr = parse_node_name(name)
                if (
                    type(creation) is not int
                    or type(nonce_c) is not bytes
                    or type(slot) is not int
                    or not 0 < slot < 1 << 23
                ):
                    raise ValueError("bad hello")
                self._hello(ident, addr.name, creation, nonce_c, slot)
            elif kind == b"auth" and inc is not None and len(msg) in (2, 3, 4):
                self._auth(ident, inc, msg[1], msg[2] if len(msg) >= 3 else None)
                if len(msg) == 4 and msg[3] is True and inc.authed:
                    # A hidden node: not in nodes(), introduced to nobody. (After _auth: its
                    # connection back to it is only made from the loop, later.)
                    self.hidden.add(inc.name)
            else:
                raise ValueError(f"unexpected handshake step {kind!r}")
        except Exception as e:
            # Aggregated, and the identity (up to 255 bytes of the peer's choosing) cut short.
            self.rejects.note(
                "a frame from an unauthenticated connection",
                f"{str(e)[:60]} [ident {ident[:8].hex()}, {len(magic)} bytes]",
            )

    def _hello(self, ident: bytes, name: str, creation: int, nonce_c: bytes, slot: int) -> None:
        inc = _Incoming(name, creation, slot, new_nonce())
        self.incoming[ident] = inc
        self.loop.call_later(self.opts.connect_timeout, self._hello_expired, ident, inc)
        proof = sign(self.cookie, b"server", nonce_c, self.name)
        self._router_send(ident, ["challenge", self.name, self.creation, inc.nonce, proof])

    def _hello_expired(self, ident: bytes, inc: _Incoming) -> None:
        # A connection that said hello but never proved the cookie is forgotten.
        if not inc.authed and self.incoming.get(ident) is inc:
            del self.incoming[ident]

    def _auth(self, ident: bytes, inc: _Incoming, proof: Any, host: Any) -> None:
        if not verify(self.cookie, b"client", inc.nonce, inc.name, proof):
            log.error("node %s: refused a connection from %r: wrong cookie", self.name, inc.name)
            del self.incoming[ident]
            self._router_send(ident, ["denied", "cookie"])
            return
        old = self.peers.get(inc.name)
        if old is not None and old.creation is not None and old.creation != inc.creation:
            self._node_down(old, "connection_closed")  # it restarted: the old one is gone
        for other_ident, other in list(self.incoming.items()):
            if other.name == inc.name and other_ident != ident:
                self._forget_incoming(other_ident, other)
        if inc.slot in self.used_slots and self.pre_granted.pop(inc.slot, None) != inc.name:
            del self.incoming[ident]
            self._router_send(ident, ["denied", "slot"])
            return
        inc.authed = True
        self.slots[inc.slot] = inc.name
        self.used_slots.add(inc.slot)
        self.slot_seen.setdefault(inc.slot, 0)
        fdchan = self.fdchan
        if fdchan is not None and self.host is not None:
            found = same_host(self.host, host)
            if found is not None:
                inc.fd_pid = found[0]
                fdchan.allowed.add(found[0])
                inc.claim = functools.partial(fdchan.claim, found[0])
        self._router_send(ident, ["welcome", self.nodes(), self.host])
        self._peer(inc.name)  # connect back: each direction has its own channel

    def _router_send(self, ident: bytes, msg: list[Any]) -> None:
        try:
            self.router.send_multipart([ident, MAGIC, msgpack.packb(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.info("node %s: could not answer a handshake: %s", self.name, e)


__all__ = ["Handshake"]
