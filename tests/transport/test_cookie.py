"""The cookie: where it comes from, the file's creation and permissions, sign/verify, CURVE keys.

Every test points HOME at a fresh temporary directory, so the real ~/.numbeam.cookie is never
read or written.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from numbeam.transport import _cookie
from numbeam.transport._cookie import (
    DEFAULT_COOKIE_FILE,
    DIGEST_SIZE,
    NONCE_SIZE,
    curve_keypair,
    new_nonce,
    resolve_cookie,
    sign,
    verify,
)
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture(autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_cookie(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


# -- where the cookie comes from ------------------------------------------------------------------


def test_explicit_cookie_wins_and_no_file_is_touched(home: Path, tmp_path: Path) -> None:
    cookie_file = tmp_path / "cookie"
    write_cookie(cookie_file, "from-file")
    assert resolve_cookie("explicit", str(cookie_file)) == b"explicit"
    assert resolve_cookie("explicit", None) == b"explicit"
    assert resolve_cookie("naïve", None) == "naïve".encode()
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("cookie", [b"bytes", 123, ["x"]])
def test_explicit_cookie_of_wrong_type_is_a_type_error(cookie: object) -> None:
    with pytest.raises(TypeError, match="cookie must be a str"):
        resolve_cookie(cookie, None)  # type: ignore[arg-type]


def test_empty_explicit_cookie_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        resolve_cookie("", None)


def test_cookie_file_of_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cookie_file must be a path"):
        resolve_cookie(None, 3)  # type: ignore[arg-type]


@posix_only
def test_default_cookie_file_is_created_in_home_with_mode_0600(home: Path) -> None:
    assert DEFAULT_COOKIE_FILE == "~/.numbeam.cookie"
    cookie = resolve_cookie(None, None)
    path = home / ".numbeam.cookie"
    assert path.read_bytes() == cookie
    assert mode_of(path) == 0o600
    assert len(cookie) >= 40  # token_urlsafe(32): 43 characters
    assert resolve_cookie(None, None) == cookie  # read back, not recreated
    assert [p.name for p in home.iterdir()] == [".numbeam.cookie"]  # no temporary file left


@posix_only
def test_cookie_file_path_expands_the_home_directory(home: Path) -> None:
    cookie = resolve_cookie(None, "~/cluster.cookie")
    assert (home / "cluster.cookie").read_bytes() == cookie


@posix_only
def test_cookie_file_accepts_a_path_object(tmp_path: Path) -> None:
    path = tmp_path / "c"
    cookie = resolve_cookie(None, path)
    assert path.read_bytes() == cookie


@posix_only
def test_created_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        resolve_cookie(None, str(tmp_path / "a"))
        os.umask(0o377)  # would leave the owner unable to read the file back
        resolve_cookie(None, str(tmp_path / "b"))
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a") == 0o600
    assert mode_of(tmp_path / "b") == 0o600


def test_new_cookie_files_get_different_random_cookies(tmp_path: Path) -> None:
    assert resolve_cookie(None, str(tmp_path / "a")) != resolve_cookie(None, str(tmp_path / "b"))


@posix_only
def test_existing_cookie_file_is_read_with_whitespace_stripped(tmp_path: Path) -> None:
    path = tmp_path / "cookie"
    write_cookie(path, "  s3cret-cookie \n\n")
    assert resolve_cookie(None, str(path)) == b"s3cret-cookie"


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_cookie_file_accessible_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "cookie"
    write_cookie(path, "secret", mode)
    with pytest.raises(PermissionError) as info:
        resolve_cookie(None, str(path))
    assert str(path) in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)
    assert f"{mode:04o}" in str(info.value)


@posix_only
def test_owner_only_read_only_cookie_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "cookie"
    write_cookie(path, "secret", 0o400)
    assert resolve_cookie(None, str(path)) == b"secret"


@posix_only
@pytest.mark.parametrize("text", ["", "  \n\t\n"])
def test_empty_cookie_file_is_a_value_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cookie"
    write_cookie(path, text)
    with pytest.raises(ValueError, match=f"cookie file {path} is empty"):
        resolve_cookie(None, str(path))


@posix_only
def test_cookie_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cookie"
    path.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not a regular file"):
        resolve_cookie(None, str(path))


def test_cookie_file_in_a_missing_directory_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "cookie"
    with pytest.raises(FileNotFoundError, match=f"cannot create cookie file {path}"):
        resolve_cookie(None, str(path))


# -- races between creators ---------------------------------------------------------------------


@posix_only
def test_creator_that_loses_the_race_reads_the_winners_cookie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process creates the file after our check found none, before ours is published."""
    path = tmp_path / "cookie"
    real_link = os.link
    calls = []

    def link_after_the_other_process(src: str, dst: str) -> None:
        calls.append(dst)
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, b"theirs")
        os.close(fd)
        real_link(src, dst)

    monkeypatch.setattr(_cookie.os, "link", link_after_the_other_process)
    assert resolve_cookie(None, str(path)) == b"theirs"
    assert calls == [str(path)]
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["cookie"]  # our temporary file is gone


@posix_only
@pytest.mark.parametrize("err", [errno.EPERM, errno.EOPNOTSUPP])
def test_file_system_without_hard_links_still_gets_a_0600_cookie_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    def no_hard_links(src: str, dst: str) -> None:
        raise OSError(err, os.strerror(err), src)

    monkeypatch.setattr(_cookie.os, "link", no_hard_links)
    path = tmp_path / "cookie"
    cookie = resolve_cookie(None, str(path))
    assert path.read_bytes() == cookie
    assert mode_of(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["cookie"]


@posix_only
def test_other_link_errors_propagate_and_leave_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(_cookie.os, "link", disk_full)
    with pytest.raises(OSError) as info:
        resolve_cookie(None, str(tmp_path / "cookie"))
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@posix_only
def test_threads_racing_to_create_the_file_all_get_the_same_cookie(tmp_path: Path) -> None:
    path = str(tmp_path / "cookie")
    n = 16
    barrier = threading.Barrier(n)
    results: list[bytes | BaseException] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait(timeout=10)
        try:
            result: bytes | BaseException = resolve_cookie(None, path)
        except BaseException as e:
            result = e
        with lock:
            results.append(result)

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == n
    assert len(set(results)) == 1, results
    assert results[0] == Path(path).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["cookie"]


CHILD = """
import sys
from numbeam.transport._cookie import resolve_cookie
sys.stdin.read()  # all released at once, when the parent closes the pipe's write end
print(resolve_cookie(None, sys.argv[1]).decode())
"""


@posix_only
def test_processes_racing_to_create_the_file_all_get_the_same_cookie(
    tmp_path: Path, home: Path
) -> None:
    path = tmp_path / "cookie"
    env = {**os.environ, "HOME": str(home)}
    go_read, go_write = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(6):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, str(path)],
                    stdin=go_read,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            )
        os.close(go_read)
        go_read = -1
        os.close(go_write)
        go_write = -1
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err.decode()
            outs.append(out.strip())
    finally:
        for fd in (go_read, go_write):
            if fd >= 0:
                os.close(fd)
        for p in procs:
            p.kill()
            p.communicate(timeout=10)
    assert len(set(outs)) == 1
    assert outs[0] == path.read_bytes()
    assert mode_of(path) == 0o600


# -- sign / verify ------------------------------------------------------------------------------

COOKIE = b"cluster-cookie"
NONCE = bytes(range(32))


def test_new_nonce_is_32_fresh_random_bytes() -> None:
    a, b = new_nonce(), new_nonce()
    assert type(a) is bytes and len(a) == NONCE_SIZE == 32
    assert a != b


def test_sign_verify_round_trip() -> None:
    digest = sign(COOKIE, b"client", NONCE, "a@127.0.0.1:9100")
    assert type(digest) is bytes and len(digest) == DIGEST_SIZE == 32
    assert digest == sign(COOKIE, b"client", NONCE, "a@127.0.0.1:9100")
    assert verify(COOKIE, b"client", NONCE, "a@127.0.0.1:9100", digest)


def test_the_cookie_is_not_in_the_proof() -> None:
    digest = sign(COOKIE, b"client", NONCE, "a@h:1")
    assert COOKIE not in digest


@pytest.mark.parametrize(
    ("cookie", "role", "nonce", "name"),
    [
        (b"other-cookie", b"client", NONCE, "a@h:1"),
        (COOKIE, b"server", NONCE, "a@h:1"),
        (COOKIE, b"client", bytes(32), "a@h:1"),
        (COOKIE, b"client", NONCE, "b@h:1"),
        (COOKIE, b"client", NONCE, "a@h:2"),
    ],
    ids=["cookie", "role", "nonce", "name", "port"],
)
def test_verify_is_false_when_anything_signed_changed(
    cookie: bytes, role: bytes, nonce: bytes, name: str
) -> None:
    digest = sign(COOKIE, b"client", NONCE, "a@h:1")
    assert not verify(cookie, role, nonce, name, digest)


def test_fields_are_unambiguous() -> None:
    """Moving bytes from one field to the next gives a different proof."""
    assert sign(COOKIE, b"ab", b"c", "d") != sign(COOKIE, b"a", b"bc", "d")
    assert sign(COOKIE, b"a", b"bc", "") != sign(COOKIE, b"a", b"b", "c")
    assert sign(COOKIE, b"", b"", "x") != sign(COOKIE, b"x", b"", "")


@pytest.mark.parametrize(
    "bad",
    [None, 0, "x" * 32, [0] * 32, b"", b"\0" * 31, b"\0" * 33, b"\0" * 32],
    ids=["none", "int", "str", "list", "empty", "short", "long", "zeros"],
)
def test_verify_is_false_for_a_bad_digest(bad: object) -> None:
    assert verify(COOKIE, b"client", NONCE, "a@h:1", bad) is False


def test_verify_is_false_for_a_truncated_or_extended_real_digest() -> None:
    digest = sign(COOKIE, b"client", NONCE, "a@h:1")
    assert not verify(COOKIE, b"client", NONCE, "a@h:1", digest[:-1])
    assert not verify(COOKIE, b"client", NONCE, "a@h:1", digest + b"\0")


def test_verify_accepts_other_bytes_like_digests() -> None:
    digest = sign(COOKIE, b"client", NONCE, "a@h:1")
    assert verify(COOKIE, b"client", NONCE, "a@h:1", bytearray(digest))
    assert verify(COOKIE, b"client", NONCE, "a@h:1", memoryview(digest))


@pytest.mark.parametrize(
    ("role", "nonce", "name"),
    [("client", NONCE, "a@h:1"), (b"client", list(NONCE), "a@h:1"), (b"client", NONCE, b"a")],
    ids=["role", "nonce", "name"],
)
def test_verify_is_false_for_peer_fields_of_the_wrong_type(
    role: object, nonce: object, name: object
) -> None:
    digest = sign(COOKIE, b"client", NONCE, "a@h:1")
    assert verify(COOKIE, role, nonce, name, digest) is False  # type: ignore[arg-type]


def test_verify_is_false_for_an_unencodable_name() -> None:
    assert verify(COOKIE, b"client", NONCE, "a\udc80", bytes(32)) is False


def test_verify_with_a_cookie_that_is_not_bytes_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cookie must be bytes"):
        verify("cookie", b"client", NONCE, "a", bytes(32))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args",
    [
        ("cookie", b"r", NONCE, "n"),
        (COOKIE, "r", NONCE, "n"),
        (COOKIE, b"r", bytearray(NONCE), "n"),
        (COOKIE, b"r", NONCE, b"n"),
    ],
    ids=["cookie", "role", "nonce", "name"],
)
def test_sign_with_wrong_types_is_a_type_error(args: tuple[object, ...]) -> None:
    with pytest.raises(TypeError, match="must be"):
        sign(*args)  # type: ignore[arg-type]


# -- CURVE keys ---------------------------------------------------------------------------------


def test_curve_keypair_is_derived_from_the_cookie() -> None:
    public, secret = curve_keypair(COOKIE)
    assert (public, secret) == curve_keypair(COOKIE)
    assert type(public) is bytes and type(secret) is bytes
    assert len(public) == len(secret) == 40
    assert len(z85.decode(public)) == len(z85.decode(secret)) == 32
    assert public == zmq.curve_public(secret)
    other_public, other_secret = curve_keypair(b"another cookie")
    assert other_public != public and other_secret != secret


def test_curve_keypair_with_a_cookie_that_is_not_bytes_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cookie must be bytes"):
        curve_keypair("cookie")  # type: ignore[arg-type]


def wait_for_event(
    monitor: zmq.Socket[bytes], wanted: set[zmq.Event], timeout_ms: int = 5000
) -> int:
    """The first monitor event in `wanted`, skipping others (connection, accept...)."""
    while monitor.poll(timeout_ms):
        event = recv_monitor_message(monitor)["event"]
        if event in wanted:
            return int(event)
    raise AssertionError(f"no event in {wanted} within {timeout_ms} ms")


HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
}


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def sockets() -> Iterator[list[zmq.Socket[bytes]]]:
    """Sockets to close when the test ends (closed, not left to the garbage collector)."""
    opened: list[zmq.Socket[bytes]] = []
    yield opened
    for s in opened:
        s.close(linger=0)


def curve_pair(
    ctx: zmq.Context[zmq.Socket[bytes]],
    sockets: list[zmq.Socket[bytes]],
    server_cookie: bytes,
    client_cookie: bytes,
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A CURVE server keyed by `server_cookie`, its monitor, and a client that trusts the
    server key derived from `client_cookie` (with its own ephemeral keypair)."""
    server = ctx.socket(zmq.REP)
    sockets.append(server)
    server.curve_server = True
    server.curve_secretkey = curve_keypair(server_cookie)[1]
    port = server.bind_to_random_port("tcp://127.0.0.1")
    monitor = server.get_monitor_socket()
    sockets.append(monitor)
    client = ctx.socket(zmq.REQ)
    sockets.append(client)
    client_public, client_secret = zmq.curve_keypair()
    client.curve_serverkey = curve_keypair(client_cookie)[0]
    client.curve_publickey = client_public
    client.curve_secretkey = client_secret
    client.connect(f"tcp://127.0.0.1:{port}")
    return server, monitor, client


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_derived_curve_keys_encrypt_a_real_zmq_connection(
    ctx: zmq.Context[zmq.Socket[bytes]], sockets: list[zmq.Socket[bytes]]
) -> None:
    server, monitor, client = curve_pair(ctx, sockets, COOKIE, COOKIE)
    assert wait_for_event(monitor, HANDSHAKE_EVENTS) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    client.send(b"ping")
    assert server.poll(5000, zmq.POLLIN)
    assert server.recv() == b"ping"
    server.send(b"pong")
    assert client.poll(5000, zmq.POLLIN)
    assert client.recv() == b"pong"


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_handshake_fails_with_a_key_from_another_cookie(
    ctx: zmq.Context[zmq.Socket[bytes]], sockets: list[zmq.Socket[bytes]]
) -> None:
    server, monitor, client = curve_pair(ctx, sockets, COOKIE, b"another cookie")
    client.send(b"ping")  # queued; never delivered
    assert wait_for_event(monitor, HANDSHAKE_EVENTS) != zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert not server.poll(0, zmq.POLLIN)
