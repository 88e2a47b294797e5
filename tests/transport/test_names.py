"""Node names and node options: parsing, validation, and the errors users see."""

from __future__ import annotations

import pytest
from numbeam.transport._names import parse_node_name

import numbeam as nb


@pytest.mark.parametrize(
    ("name", "endpoint"),
    [
        ("a@127.0.0.1:9100", "tcp://127.0.0.1:9100"),
        ("worker-1.x@host.example:1", "tcp://host.example:1"),
        ("a@[::1]:9100", "tcp://[::1]:9100"),
        ("a@ipc:///tmp/a.sock", "ipc:///tmp/a.sock"),
    ],
)
def test_a_name_is_its_address(name, endpoint):
    addr = parse_node_name(name)
    assert addr.endpoint == endpoint
    assert addr.name == name


def test_a_bare_name_binds_to_loopback_on_a_free_port():
    addr = parse_node_name("a", for_bind=True)
    assert addr.name == "a@127.0.0.1:0"
    assert addr.bind_endpoint(None) == "tcp://127.0.0.1:0"
    assert addr.bind_endpoint("0.0.0.0") == "tcp://0.0.0.0:0"


def test_an_ipc_name_without_a_path_gets_a_fresh_one():
    addr = parse_node_name("a@ipc://", for_bind=True)
    ep = addr.bind_endpoint(None)
    assert ep.startswith("ipc://") and ep.endswith(".sock") and "numbeam-a-" in ep
    assert addr.with_endpoint(ep).name == "a@" + ep


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a", "expected 'name@host:port'"),
        ("@127.0.0.1:1", "before '@'"),
        ("a b@127.0.0.1:1", "before '@'"),
        ("a@127.0.0.1", "host:port"),
        ("a@127.0.0.1:99999", "host:port"),
        ("a@127.0.0.1:0", "port 0"),
        ("a@ipc://", "socket path"),
        ("a@ho st:1", "host:port"),
    ],
)
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message):
        parse_node_name(name)


def test_a_name_must_be_a_str():
    with pytest.raises(TypeError, match="node name must be a str"):
        parse_node_name(42)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"node": ""}, TypeError, "node must be a non-empty str"),
        ({"cookie": 5}, TypeError, "cookie"),
        ({"curve": "yes"}, TypeError, "curve must be a bool"),
        ({"heartbeat_interval": 0}, ValueError, "heartbeat_interval"),
        ({"heartbeat_interval": 2.0, "heartbeat_timeout": 1.0}, ValueError, "heartbeat_timeout"),
        ({"connect_timeout": -1}, ValueError, "connect_timeout"),
        ({"max_message_size": 10}, ValueError, "max_message_size"),
    ],
)
def test_bad_node_options_are_refused_at_start(options, error, message):
    with pytest.raises(error, match=message):
        nb.NodeOptions.resolve(**options)


def test_the_node_option_is_never_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("NUMBEAM_NODE", "a@127.0.0.1:0")
    monkeypatch.setenv("NUMBEAM_COOKIE", "from-env")
    monkeypatch.setenv("NUMBEAM_CURVE", "1")
    opts = nb.NodeOptions.resolve()
    assert opts.node is None
    assert opts.cookie == "from-env"
    assert opts.curve is True


async def test_a_node_that_cannot_listen_fails_to_start():
    async with nb.Runtime(node="a@127.0.0.1:0", cookie="c"):
        taken = nb.node()
        with pytest.raises(RuntimeError, match="already running"):
            async with nb.Runtime(node=taken, cookie="c"):
                pass


async def test_a_bad_node_name_fails_at_start():
    with pytest.raises(ValueError, match="bad node name"):
        async with nb.Runtime(node="a@nowhere", cookie="c"):
            pass
