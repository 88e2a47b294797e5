"""The cluster's shared secret (the cookie): where it comes from, and how a node proves it has it.

As in distributed Erlang, nodes that share a cookie trust each other, and a cookie is taken from
the `cookie=` option (or ``NUMBEAM_COOKIE``), else from a file that is created with a random
cookie on first use, readable by its owner only (``~/.numbeam.cookie``, like
``~/.erlang.cookie``). An existing file that others can read is refused rather than used, since
whoever can read it can join the cluster and run code there.

The cookie never crosses the wire. Each side of a handshake sends a fresh nonce and proves it
knows the cookie with an HMAC of the peer's nonce, its role and its name (`sign` / `verify`);
the role and the name in the MAC stop a reflected or replayed answer from being accepted. For
optional encryption the cookie also yields the cluster's CURVE server keypair
(`curve_keypair`), so that encryption needs no key distribution beyond the cookie itself.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import stat

import zmq
from zmq.utils import z85

__all__ = [
    "DEFAULT_COOKIE_FILE",
    "DIGEST_SIZE",
    "NONCE_SIZE",
    "curve_keypair",
    "new_nonce",
    "resolve_cookie",
    "sign",
    "verify",
]

DEFAULT_COOKIE_FILE = "~/.numbeam.cookie"
NONCE_SIZE = 32
DIGEST_SIZE = hashlib.sha256().digest_size

_SIGN_DOMAIN = b"numbeam-handshake-v1"
_CURVE_DOMAIN = b"numbeam-curve-v1"
# os.link fails with these where the file system has no hard links (FAT, some FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


def resolve_cookie(cookie: str | None, cookie_file: str | os.PathLike[str] | None) -> bytes:
    """Return the node's cookie as bytes: `cookie` if given, else the cookie file's contents.

    Args:
        cookie: an explicit cookie (the node options layer puts ``NUMBEAM_COOKIE`` here); it
            wins over any file, which is then not touched.
        cookie_file: the file to read (``NUMBEAM_COOKIE_FILE``); None means
            `DEFAULT_COOKIE_FILE`. ``~`` is expanded. A missing file is created with a random
            cookie and mode 0600; if another process creates it at the same moment, both end up
            with the same cookie (the file appears complete, or not at all).

    Raises:
        TypeError: `cookie` is not a str, or `cookie_file` not a path.
        ValueError: the cookie, or the file's contents, is empty (whitespace is stripped from
            the file's contents, not from an explicit cookie).
        PermissionError: the file is readable or writable by group or others (as Erlang refuses
            such a ``~/.erlang.cookie``): ``chmod 600`` it.
    """
    if cookie is not None:
        if not isinstance(cookie, str):
            raise TypeError(f"cookie must be a str, got {type(cookie).__name__}")
        if not cookie:
            raise ValueError("cookie must be a non-empty str, got ''")
        return cookie.encode()
    if cookie_file is None:
        cookie_file = DEFAULT_COOKIE_FILE
    if not isinstance(cookie_file, (str, os.PathLike)):
        raise TypeError(f"cookie_file must be a path (str), got {type(cookie_file).__name__}")
    path = os.path.expanduser(os.fspath(cookie_file))
    if not path:
        raise ValueError("cookie_file must be a non-empty path, got ''")
    try:
        return _read_cookie_file(path)
    except FileNotFoundError:
        pass
    return _create_cookie_file(path)


def _read_cookie_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        # Checked on the open file itself, so a chmod or a replaced file in between cannot fool it.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"cookie file {path} is not a regular file")
        if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
            raise PermissionError(
                f"cookie file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}): anyone who can read it can join the cluster; "
                f"run `chmod 600 {path}`"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read().strip()
    finally:
        os.close(fd)
    if not data:
        raise ValueError(
            f"cookie file {path} is empty: write a secret into it, or delete it to have "
            "a random one created"
        )
    return data


def _create_cookie_file(path: str) -> bytes:
    """Create `path` with a fresh random cookie, or read the one another process created first.

    The cookie is written to a private temporary file that is then hard-linked to `path`:
    `link` fails if `path` exists, so the file appears with its full contents or not at all, and
    a process that loses the race reads the winner's cookie, never an empty file.
    """
    token = secrets.token_urlsafe(32).encode()
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(8)}")
    try:
        _write_new(tmp, token)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"cannot create cookie file {path}: directory {directory} does not exist"
        ) from None
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _read_cookie_file(path)
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        # No hard links here: create `path` itself exclusively. A reader can then, for an
        # instant, see the file before its contents (and get the empty-file ValueError).
        try:
            _write_new(path, token)
        except FileExistsError:
            return _read_cookie_file(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return token


def _write_new(path: str, data: bytes) -> None:
    """Create `path` (it must not exist) with mode 0600 from the start, and write `data`."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if os.name == "posix":
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask took away
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def new_nonce() -> bytes:
    """Return a fresh challenge: `NONCE_SIZE` random bytes from the OS's secure source."""
    return secrets.token_bytes(NONCE_SIZE)


def _message(role: bytes, nonce: bytes, name: str) -> bytes:
    # Each field is length-prefixed, so no two (role, nonce, name) give the same bytes.
    name_bytes = name.encode()
    parts = [_SIGN_DOMAIN]
    for field in (role, nonce, name_bytes):
        parts.append(len(field).to_bytes(4, "big"))
        parts.append(field)
    return b"".join(parts)


def sign(cookie: bytes, role: bytes, nonce: bytes, name: str) -> bytes:
    """Prove knowledge of `cookie`: HMAC-SHA256 over `role`, the peer's `nonce` and `name`.

    Args:
        cookie: the shared secret (`resolve_cookie`); it is the HMAC key and never sent.
        role: which side of the handshake answers (e.g. ``b"client"``, ``b"server"``), so one
            side's answer cannot be reflected back as the other's.
        nonce: the challenge the peer sent (fresh per handshake, so answers cannot be replayed).
        name: the node name the signer claims, bound into the proof.

    Returns:
        `DIGEST_SIZE` bytes.
    """
    for label, value in (("cookie", cookie), ("role", role), ("nonce", nonce)):
        if not isinstance(value, bytes):
            raise TypeError(f"{label} must be bytes, got {type(value).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return hmac.digest(cookie, _message(role, nonce, name), "sha256")


def verify(cookie: bytes, role: bytes, nonce: bytes, name: str, digest: object) -> bool:
    """Whether `digest` is ``sign(cookie, role, nonce, name)``, compared in constant time.

    Everything but `cookie` may come from a peer, so a value of the wrong type or length
    (a truncated digest, a str, None) gives False, never an exception.
    """
    if not isinstance(cookie, bytes):
        raise TypeError(f"cookie must be bytes, got {type(cookie).__name__}")
    if not isinstance(digest, (bytes, bytearray, memoryview)):
        return False
    digest = bytes(digest)
    if len(digest) != DIGEST_SIZE:
        return False
    if not (isinstance(role, bytes) and isinstance(nonce, bytes) and isinstance(name, str)):
        return False
    try:
        expected = sign(cookie, role, nonce, name)
    except UnicodeEncodeError:  # a name with lone surrogates cannot have been signed
        return False
    return hmac.compare_digest(expected, digest)


def curve_keypair(cookie: bytes) -> tuple[bytes, bytes]:
    """Return the cluster's CURVE server keypair ``(public, secret)``, derived from `cookie`.

    Both are Z85-encoded (40 bytes), as `zmq.CURVE_SERVERKEY` / `zmq.CURVE_SECRETKEY` take
    them. Every node with the cookie derives the same pair, so a node can act as the CURVE
    server for any peer, and a client needs only the cookie to know the server's public key;
    clients use their own ephemeral `zmq.curve_keypair()`. Any 32 bytes are a valid Curve25519
    secret key (the scalar is clamped when used).
    """
    if not isinstance(cookie, bytes):
        raise TypeError(f"cookie must be bytes, got {type(cookie).__name__}")
    secret = z85.encode(hashlib.sha256(_CURVE_DOMAIN + cookie).digest())
    return zmq.curve_public(secret), secret
