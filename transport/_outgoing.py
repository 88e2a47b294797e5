"""Outgoing batches, per peer (the `Outgoing` part of `Distribution`).

What a node sends another flows as ZeroMQ messages ``[batch, *buffers]`` on its DEALER to the
peer's ROUTER: ``batch`` is the concatenation of msgpack-encoded operations (see `_wire`, and
the codes in `_ops`) behind one msgpack array header; large array bytes follow as their own
frames, sent with ``copy=False``. Operations are coalesced per peer until the end of the
event-loop iteration (or of the runtime's drain of its run queue), so a burst of small messages
costs one ZeroMQ send; a batch past ``BATCH_BYTES`` is sealed and goes at once. For a peer on
this host, tensors in shared memory go as handles, and the descriptors of their segments are
passed ahead of the batch that names them (see numbeam.tensors._share).

Reading order: enqueue an operation, mark the peer for the next flush, flush it (the common
case in one send, then sealed batches in order, with back-pressure), pass descriptors.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
from numbeam.actors._types import RemoteError

from ._ops import _NOBLOCK, _UP, BATCH_BYTES
from ._sockets import _fast
from ._state import Peer, State, _Batch

log = logging.getLogger("numbeam.transport")


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of `n` items: a batch is one array of operations."""
    if n < 16:
        return _HEADERS[n]
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


_HEADERS = [bytes((0x90 | n,)) for n in range(16)]  # arrays of up to 15 items


class Outgoing(State):
    """Encoding operations into per-peer batches, and flushing them to the peers' DEALERs."""

    def _enqueue(self, peer: Peer, item: list[Any]) -> None:
        batch = peer.batch
        n = len(batch.frames)
        enc = self.encoder
        if peer.fd_address is None:
            enc.handle_seq = None
        else:
            enc.peer = peer.name  # (CUDA handles record which node imports them)
            token = batch.token
            if token is None:
                chan = self.fdchan
                assert chan is not None
                chan.token = token = batch.token = chan.token + 1
            enc.handle_seq = token
            if enc.fds is not batch.fds:  # (a batch's lists are emptied in place when sent)
                enc.fds = batch.fds
                enc.fd_at = batch.fd_at
                enc.segments = batch.segments
        unsent = peer.unsent
        if unsent is None:  # the usual case: the peer is up
            try:
                data = enc.encode(item, batch.frames)
            except BaseException:
                del batch.frames[n:]
                raise
        else:
            data = self._encode_unsent(peer, unsent, item, batch)
        batch.parts.append(data)
        batch.size += len(data)
        if len(batch.frames) > n:
            for f in batch.frames[n:]:
                batch.size += f.nbytes
        if batch.size >= BATCH_BYTES:
            # A full batch goes out now, so the peer decodes it while we encode the next.
            peer.sealed.append(batch)
            peer.batch = _Batch()
            if peer.state == _UP:
                self._flush_peer(peer)
        if not peer.dirty:  # (_mark_dirty, inline: this runs for every message)
            peer.dirty = True
            self._dirty.append(peer)
            if not self._flush_scheduled and not self.rt._drain_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)

    def _encode_unsent(
        self, peer: Peer, unsent: list[list[Any]], item: list[Any], batch: _Batch
    ) -> bytes:
        """Encode for a peer not up yet, keeping the item in case it must be encoded again
        (see _reencode)."""
        enc = self.encoder
        n = len(batch.frames)
        enc.shared_bytes = False
        try:
            data = enc.encode(item, batch.frames)
        except BaseException:
            del batch.frames[n:]
            raise
        if self.fdchan is not None:
            unsent.append(item)
            if enc.shared_bytes:
                peer.unsent_shared = True
        return data

    def _enqueue_reason(self, peer: Peer, item: list[Any], at: int) -> None:
        """Enqueue an item carrying an exit reason; a reason that cannot cross goes as text."""
        try:
            self._enqueue(peer, item)
        except TypeError:
            reason = item[at]
            item[at] = RemoteError(type(reason).__qualname__, repr(reason))
            self._enqueue(peer, item)

    def _mark_dirty(self, peer: Peer) -> None:
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)
        # A pending drain of the run queue flushes when it ends; otherwise flush from the loop.
        if not self._flush_scheduled and not self.rt._drain_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _after_drain(self) -> None:
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for peer in dirty:
                peer.dirty = False
                if peer.state == _UP:
                    self._flush_peer(peer)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._after_drain()

    def _flush_peer(self, peer: Peer) -> None:
        batch = peer.batch
        sealed = peer.sealed
        sock = peer.sock
        assert sock is not None
        if not sealed and not batch.frames and not batch.fds:
            # The common case (small messages, nothing queued before): one send, and the
            # batch object is emptied for the next messages instead of made anew.
            parts = batch.parts
            if not parts:
                return
            n = len(parts)
            body = _HEADERS[n] + parts[0] if n == 1 else _array_header(n) + b"".join(parts)
            if _fast is not None:
                sent = _fast.send(peer.handle, body)
            else:
                try:
                    sock.send(body, _NOBLOCK)
                    sent = True
                except zmq.Again:
                    sent = False
            if sent:
                # (it keeps its token: a token is spent only by a batch that passes descriptors)
                batch.parts = []
                batch.size = 0
                return
        if batch.parts:
            sealed.append(batch)
            peer.batch = _Batch()
        while sealed:
            b = sealed[0]
            if b.fds and not self._pass_fds(peer, b):
                return
            parts = b.parts
            n = len(parts)
            body = _HEADERS[n] + parts[0] if n == 1 else _array_header(n) + b"".join(parts)
            try:
                if b.frames:
                    sock.send_multipart([body, *b.frames], _NOBLOCK, copy=False)
                elif _fast is not None:
                    if not _fast.send(peer.handle, body):
                        raise zmq.Again
                else:
                    sock.send(body, _NOBLOCK)
            except zmq.Again:
                # Back-pressure: ZeroMQ's queue is full. Keep it; the DEALER's readiness
                # (its FD) calls _on_dealer, which flushes again.
                self._check_events(peer)
                return
            sealed.popleft()

    def _pass_fds(self, peer: Peer, b: _Batch) -> bool:
        """Pass a batch's segment descriptors ahead of it; False: wait, the peer's queue is full
        (the batch stays sealed, and goes once the peer has taken some)."""
        chan = self.fdchan
        address = peer.fd_address
        assert chan is not None and address is not None and b.token is not None
        try:
            chan.send(address, b.token, b.fds)
        except BlockingIOError:
            sock = chan.sender(address)
            self.loop.add_writer(sock.fileno(), self._fds_writable, peer, sock)
            return False
        except OSError as e:
            # The node is going (its socket is gone); its handles will not resolve there.
            log.warning("node %s: cannot pass tensors to %s: %s", self.name, peer.name, e)
        # Emptied in place: the encoder may still point at these lists (see _enqueue).
        b.fds.clear()
        b.fd_at.clear()
        b.segments.clear()
        return True

    def _fds_writable(self, peer: Peer, sock: Any) -> None:
        self.loop.remove_writer(sock.fileno())
        if peer.state == _UP:
            self._flush_peer(peer)

    def _reencode(self, peer: Peer) -> None:
        """Encode what was queued before the handshake again, with tensor handles, if the peer
        is on this host and some of it had tensors in shared memory."""
        items, peer.unsent = peer.unsent, None
        if items and peer.unsent_shared and peer.fd_address is not None:
            peer.batch = _Batch()
            peer.sealed.clear()
            for item in items:
                self._enqueue(peer, item)


__all__ = ["Outgoing"]
