"""A node under attack: malformed, truncated, random and oversized frames, a wrong cookie and
raw bytes are dropped and logged, while a well-behaved peer loses none of its messages."""

from __future__ import annotations

import asyncio
import logging
import random
import socket

import msgpack
import zmq
import zmq.asyncio
from conftest import node_runtime
from numbeam.transport._cookie import new_nonce, sign
from numbeam.transport._gate import ZAP_ENDPOINT, credentials
from numbeam.transport._ops import (
    MAGIC,
    MAX_HELD,
    OP_EXIT,
    OP_LINK,
    OP_SEND,
    OP_SPAWN,
    SLOT_SHIFT,
)
from numbeam.transport._outgoing import _array_header
from numbeam.transport._wire import Encoder

import numbeam as nb

T = 20.0
COOKIE = b"numbeam-test-cookie"


def _endpoint(name: str) -> str:
    return "tcp://" + name.partition("@")[2]


def _through_the_gate(sock: zmq.asyncio.Socket, target: str, cookie: bytes = COOKIE) -> None:
    """Give a raw socket the credentials a node with `cookie` presents to ZeroMQ's handshake."""
    sock.plain_username, sock.plain_password = credentials(cookie, target)


async def _accept_every_connection(ctx: zmq.asyncio.Context) -> None:
    """A ZAP handler for a fake node's PLAIN server: it lets every connection in."""
    zap = ctx.socket(zmq.REP)
    zap.setsockopt(zmq.LINGER, 0)
    zap.bind(ZAP_ENDPOINT)
    try:
        while True:
            version, request_id, *_ = await zap.recv_multipart()
            await zap.send_multipart([version, request_id, b"200", b"OK", b"", b""])
    finally:
        zap.close(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _authenticated_dealer(
    ctx: zmq.asyncio.Context, target: str
) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]:
    """A raw DEALER that passes the handshake as a node "mallory", and a ROUTER at mallory's
    address that accepts the node's connection back but never answers its handshake (so the
    node keeps mallory's incoming connection while it waits, up to its connect_timeout)."""
    port = _free_port()
    fake = f"mallory@127.0.0.1:{port}"
    lair = ctx.socket(zmq.ROUTER)
    lair.setsockopt(zmq.LINGER, 0)
    lair.plain_server = True  # (the test runs _accept_every_connection in this context)
    lair.bind(f"tcp://127.0.0.1:{port}")
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    _through_the_gate(d, target)
    d.connect(_endpoint(target))
    nonce = new_nonce()
    await d.send_multipart([MAGIC, msgpack.packb([b"hello", fake, 7, nonce, 4242])])
    magic, payload = await asyncio.wait_for(d.recv_multipart(), T)
    kind, server, _creation, nonce_s, _proof = msgpack.unpackb(payload)
    assert (magic, kind, server) == (MAGIC, "challenge", target)
    await d.send_multipart(
        [MAGIC, msgpack.packb([b"auth", sign(COOKIE, b"client", nonce_s, fake)])]
    )
    _, payload = await asyncio.wait_for(d.recv_multipart(), T)
    assert msgpack.unpackb(payload)[0] == "welcome"
    return d, lair


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    choice = rng.randrange(4)
    if choice == 0 and b:  # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del b[rng.randrange(len(b) + 1) :]
    elif choice == 2:  # splice random bytes in
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 16))
    else:
        b = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(b)


def _valid_items(me: nb.Pid) -> list[list]:
    return [
        [OP_SEND, 999_999, 1, ("junk", 1)],
        [OP_LINK, me, 999_999, 1],
        [OP_EXIT, me, 999_999, 1, "boom", False],
        [OP_SPAWN, 5, 0, "os", "system", ["true"], None, None, None],
        [OP_SEND, "not an id", None, None],
        [99],
        [],
        "not even a list",
    ]


async def test_a_node_drops_garbage_and_keeps_serving_a_good_peer(nodes, caplog):
    caplog.set_level(logging.INFO, logger="numbeam")
    b = await nodes("b")
    rng = random.Random(20261124)
    ctx = zmq.asyncio.Context()
    zap = asyncio.ensure_future(_accept_every_connection(ctx))
    n = 3000
    try:
        async with node_runtime(max_message_size=1 << 20, connect_timeout=60.0) as rt:
            me = nb.self()
            target = nb.node()
            nb.spawn("dist_helpers:sequence_sender", me, "good", n, node=b.name)
            # 1. raw bytes on the TCP port (not even ZMTP).
            host, port = target.partition("@")[2].rsplit(":", 1)
            for _ in range(5):
                with socket.create_connection((host, int(port))) as s:
                    s.sendall(rng.randbytes(200))
            # 2. a DEALER without credentials (refused by ZeroMQ's handshake: its frames
            # never leave it), and one that passes the gate but never the node handshake,
            # sending random multipart frames.
            outsider = ctx.socket(zmq.DEALER)
            outsider.setsockopt(zmq.LINGER, 0)
            outsider.connect(_endpoint(target))
            anon = ctx.socket(zmq.DEALER)
            anon.setsockopt(zmq.LINGER, 0)
            _through_the_gate(anon, target)
            anon.connect(_endpoint(target))
            for _ in range(300):
                parts = [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 4))]
                if rng.random() < 0.3:
                    parts[0] = MAGIC
                await anon.send_multipart(parts)
            # 3. a peer that authenticates, then sends malformed batches of every kind.
            evil, lair = await _authenticated_dealer(ctx, target)
            enc = Encoder()
            valid = []
            for item in _valid_items(me):
                frames: list = []
                valid.append(b"\x91" + enc.encode(item, frames))  # a batch of one
            for i in range(2000):
                body = _mutate(rng, rng.choice(valid)) if i % 3 else rng.choice(valid)
                extra = [rng.randbytes(8)] if rng.random() < 0.1 else []
                await evil.send_multipart([body, *extra])
            # unknown ext type, a frame index that is not there, an oversized frame
            await evil.send(msgpack.packb([[OP_SEND, 1, 1, msgpack.ExtType(99, b"x")]]))
            await evil.send(b"\x91\x94\x00\x01\x01\xd4\x0d\x00")
            await evil.send(b"\x00" * (2 << 20))
            # 4. a peer with the wrong cookie (refused by the gate), and one that passes the
            # gate but then fails the node handshake's proof.
            stranger = ctx.socket(zmq.DEALER)
            stranger.setsockopt(zmq.LINGER, 0)
            _through_the_gate(stranger, target, b"not the cookie")
            stranger.connect(_endpoint(target))
            wrong = ctx.socket(zmq.DEALER)
            wrong.setsockopt(zmq.LINGER, 0)
            _through_the_gate(wrong, target)
            wrong.connect(_endpoint(target))
            await wrong.send_multipart(
                [MAGIC, msgpack.packb([b"hello", "eve@127.0.0.1:1", 1, new_nonce(), 77])]
            )
            _, payload = await asyncio.wait_for(wrong.recv_multipart(), T)
            nonce_s = msgpack.unpackb(payload)[3]
            bad = sign(b"not the cookie", b"client", nonce_s, "eve@127.0.0.1:1")
            await wrong.send_multipart([MAGIC, msgpack.packb([b"auth", bad])])
            _, payload = await asyncio.wait_for(wrong.recv_multipart(), T)
            assert msgpack.unpackb(payload) == ["denied", "cookie"]

            # The good peer's messages all arrive, in order, none lost.
            got = [
                await nb.receive(lambda m: type(m) is tuple and m[:1] == ("good",), timeout=T)
                for _ in range(n)
            ]
            assert got == [("good", i) for i in range(n)]
            # And the node still works both ways.
            pid = nb.spawn("dist_helpers:echo", node=b.name)
            nb.send(pid, (me, "after"))
            assert await nb.receive(lambda m: m == (pid, "after"), timeout=T) == (pid, "after")
            assert rt.pid == me
            for s in (outsider, anon, evil, stranger, wrong, lair):
                s.close(0)
    finally:
        zap.cancel()
        await asyncio.wait([zap], timeout=T)
        ctx.term()
    text = caplog.text
    assert "unauthenticated" in text
    assert "malformed" in text
    assert "wrong cookie" in text
    assert "does not know the cookie" in text


async def test_nothing_is_sent_to_a_node_before_its_handshake_completes():
    """Messages queued for a node while we connect (here more than a batch, so sealed ones
    too) go out only after the welcome: a data frame before it would be dropped there."""
    port = _free_port()
    name = f"slow@127.0.0.1:{port}"
    ctx = zmq.asyncio.Context()
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.plain_server = True  # as a node's ROUTER: its gate lets our node in
    zap = asyncio.ensure_future(_accept_every_connection(ctx))
    server.bind(f"tcp://127.0.0.1:{port}")
    try:
        async with node_runtime(connect_timeout=60.0):
            pid = nb.spawn("dist_helpers:echo", node=name)  # connects, and queues the spawn
            for i in range(200):
                nb.send(pid, ("x" * 1000, i))  # ~200 KB: several sealed batches
            ident, magic, payload = await asyncio.wait_for(server.recv_multipart(), T)
            kind, client, _creation, nonce_c, _slot = msgpack.unpackb(payload)
            assert (magic, kind, client) == (MAGIC, b"hello", nb.node())
            nonce_s = new_nonce()
            proof = sign(COOKIE, b"server", nonce_c, name)
            await server.send_multipart(
                [ident, MAGIC, msgpack.packb(["challenge", name, 99, nonce_s, proof])]
            )
            # The next frame must be the auth, not queued data.
            ident2, magic, payload = await asyncio.wait_for(server.recv_multipart(), T)
            assert (ident2, magic, msgpack.unpackb(payload)[0]) == (ident, MAGIC, b"auth")
            await server.send_multipart([ident, MAGIC, msgpack.packb(["welcome", []])])
            frames = await asyncio.wait_for(server.recv_multipart(), T)
            assert frames[0] == ident and frames[1] != MAGIC  # now the data: a batch
            assert nb.disconnect(name)  # it would never acknowledge a goodbye
    finally:
        zap.cancel()
        await asyncio.wait([zap], timeout=T)
        server.close(0)
        ctx.term()


async def test_operations_held_for_pids_never_spawned_are_bounded_per_peer(caplog):
    """A peer may address pids of its spawn range before their spawn arrives; they are held,
    but at most MAX_HELD per peer: past it they meet no process, and that is logged."""
    caplog.set_level(logging.WARNING, logger="numbeam")
    ctx = zmq.asyncio.Context()
    zap = asyncio.ensure_future(_accept_every_connection(ctx))
    try:
        async with node_runtime(connect_timeout=60.0) as rt:
            me = nb.self()
            evil, lair = await _authenticated_dealer(ctx, nb.node())  # spawn slot 4242
            enc = Encoder()
            total = MAX_HELD + 2000
            for start in range(1, total + 1, 1000):
                parts = [
                    enc.encode([OP_SEND, (4242 << SLOT_SHIFT) | n, 0, "held"], [])
                    for n in range(start, min(start + 1000, total + 1))
                ]
                await evil.send(_array_header(len(parts)) + b"".join(parts))
            # On the same connection, after them: once this arrives, all were handled.
            await evil.send(b"\x91" + enc.encode([OP_SEND, me.id, me.creation, "done"], []))
            assert await nb.receive(lambda m: m == "done", timeout=T) == "done"
            assert sum(len(v) for v in rt.dist.pending_spawn.values()) == MAX_HELD
            assert rt.dist.held == {"mallory@" + lair.last_endpoint.decode()[6:]: MAX_HELD}
            for s in (evil, lair):
                s.close(0)
    finally:
        zap.cancel()
        await asyncio.wait([zap], timeout=T)
        ctx.term()
    assert f"past {MAX_HELD} held for pids not spawned yet" in caplog.text
    assert caplog.text.count("held for pids") <= 2  # aggregated, not one line per operation
