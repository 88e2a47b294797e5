"""The optional C extension for a node's hot ZeroMQ calls (transport/_zmqfast.c), against
pyzmq on real sockets; and the node tests again without it (pyzmq makes every call)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from numbeam.transport import _sockets

HERE = Path(__file__).resolve().parent
fast = _sockets._fast
needs_fast = pytest.mark.skipif(fast is None, reason="the C extension is not built here")


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    router.linger = dealer.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield router, dealer
    finally:
        router.close(0)
        dealer.close(0)


def wait_readable(sock: zmq.Socket) -> None:
    assert sock.poll(10_000, zmq.POLLIN), "nothing arrived within 10 s"


@needs_fast
def test_recv_router_takes_two_frame_messages_and_stops_at_a_longer_one(pair) -> None:
    router, dealer = pair
    dealer.send(b"one")
    dealer.send(b"two")
    dealer.send_multipart([b"head", b"big", b"bigger"])
    dealer.send(b"after")
    got: list = []
    while len(got) < 4:
        wait_readable(router)
        for _ident, body, more in fast.recv_router(router.underlying, 100):
            extra = []
            while more:
                frame = router.recv(copy=False)
                extra.append(frame.bytes)
                more = frame.more
            got.append((body, extra))
    assert got == [(b"one", []), (b"two", []), (b"head", [b"big", b"bigger"]), (b"after", [])]
    assert fast.recv_router(router.underlying, 100) == []  # nothing left, no exception


@needs_fast
def test_recv_router_takes_at_most_the_limit(pair) -> None:
    router, dealer = pair
    for i in range(5):
        dealer.send(b"%d" % i)
    taken: list = []
    while len(taken) < 5:
        wait_readable(router)
        msgs = fast.recv_router(router.underlying, 2)
        assert len(msgs) <= 2
        taken += [body for _, body, _ in msgs]
    assert taken == [b"0", b"1", b"2", b"3", b"4"]


@needs_fast
def test_send_says_false_when_the_queue_is_full(pair) -> None:
    _, dealer = pair
    dealer.close(0)
    lonely = zmq.Context.instance().socket(zmq.DEALER)  # connected to nobody: no pipe at all
    try:
        assert fast.send(lonely.underlying, b"x") is False
    finally:
        lonely.close(0)
    with pytest.raises(TypeError):
        fast.send(0, "not bytes")


def test_setup_refuses_a_library_that_is_not_loaded() -> None:
    if fast is None:
        pytest.skip("the C extension is not built here")
    with pytest.raises(OSError, match="not loaded"):
        fast.setup("/nonexistent/libzmq.so")


@pytest.mark.timeout(180)  # three test files in a subprocess: ~40 s alone, more on a busy box
def test_the_node_tests_pass_without_the_c_extensions(pure_python_pytest) -> None:
    pure_python_pytest(
        str(HERE / "test_nodes.py"), str(HERE / "test_fuzz.py"), str(HERE / "test_tensor_nodes.py")
    )
