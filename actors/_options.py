"""Node options: one frozen dataclass, read from arguments first, then ``NUMBEAM_*`` variables.

Every knob a node has lives here, validated once at construction, so the runtime never parses
configuration on a hot path and a typo fails at start-up with the name of the bad option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any


def _env_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Options of one node (``nb.run(main, **options)``, ``nb.Runtime(**options)``).

    Attributes:
        uvloop: run `nb.run` on uvloop when it is installed (env ``NUMBEAM_UVLOOP``).
        run_queue_budget: how many process wake-ups the scheduler runs before it lets the event
            loop poll I/O again (env ``NUMBEAM_RUN_QUEUE_BUDGET``); like BEAM's reductions.
        shutdown_timeout: seconds a stopping runtime waits for processes that trap exits to
            finish before it kills them (env ``NUMBEAM_SHUTDOWN_TIMEOUT``).
        node: this node's name, ``name@host:port`` or ``name@ipc:///path`` (port 0, or no
            path, picks a free one; a bare ``name`` means ``name@127.0.0.1:0``). None keeps
            the runtime local: no socket is opened. Never read from the environment.
        cookie: the shared secret every node of a cluster must have (env ``NUMBEAM_COOKIE``);
            without it, the cookie file is used.
        cookie_file: where the cookie is kept, created with a random cookie and mode 0600 on
            first use (env ``NUMBEAM_COOKIE_FILE``; default ``~/.numbeam.cookie``).
        curve: encrypt every connection with ZeroMQ's CURVE, with keys derived from the
            cookie (env ``NUMBEAM_CURVE``); all nodes of a cluster must agree.
        listen: the host to bind instead of the one in the node's name, e.g. ``0.0.0.0``
            (env ``NUMBEAM_LISTEN``). Nodes listen on their name's address otherwise.
        heartbeat_interval, heartbeat_timeout: ZeroMQ heartbeats on every connection: a peer
            silent for `heartbeat_timeout` seconds is down (env ``NUMBEAM_HEARTBEAT_*``).
        connect_timeout: seconds a connection may take to finish its handshake.
        max_message_size: the largest frame a node accepts, in bytes; a peer that sends a
            bigger one is disconnected (env ``NUMBEAM_MAX_MESSAGE_SIZE``).
        tensor_threshold: tensors of more bytes than this live in shared memory; smaller ones
            are copied with each message (env ``NUMBEAM_TENSOR_THRESHOLD``; BEAM's 64).
        tensor_budget: the most bytes of shared memory this node may hold for its tensors;
            past it, making a tensor raises MemoryError (env ``NUMBEAM_TENSOR_BUDGET``;
            None: no limit but the size of ``/dev/shm``).
        tensor_handles: send tensors to nodes on this host as handles to shared memory;
            False sends their bytes, as to another host (env ``NUMBEAM_TENSOR_HANDLES``).
        devices: the devices this node drives, each through a worker node of its own:
            ``"auto"`` (every CUDA device CuPy sees, plus ``fake:0..N-1`` when
            ``NUMBEAM_FAKE_DEVICES=N``), a list of names such as ``["cuda:0", "fake:0"]``, or
            ``[]`` for none (env ``NUMBEAM_DEVICES``: ``auto``, or names separated by commas).
        start_workers: ``"lazy"`` starts a device's worker on first use, ``"eager"`` starts
            every worker with the node (env ``NUMBEAM_START_WORKERS``).
        worker_start_timeout: seconds a device worker may take to start (CUDA context
            creation included); past it, it is started again, and what waited for it is told
            ``"noconnection"`` (env ``NUMBEAM_WORKER_START_TIMEOUT``).
        offload_threads: the threads of the node's pool for `nb.offload` (env
            ``NUMBEAM_OFFLOAD_THREADS``; None: one per CPU this process may use).
        offload_blas_threads: the most threads each BLAS / OpenMP library may use while the
            node runs, set with threadpoolctl when the offload pool starts (env
            ``NUMBEAM_OFFLOAD_BLAS_THREADS``; None: CPUs // offload_threads, at least 1).
        hidden: a hidden node (Erlang's ``-hidden``): the nodes it connects to do not list it
            in ``nb.nodes()`` and introduce it to nobody, and it meets only the nodes it
            connects to itself (env ``NUMBEAM_HIDDEN``); what ``numbeam observer`` and
            ``numbeam remsh`` run as.
        observer: serve the live observer page and Prometheus ``/metrics`` on this TCP port
            from the node's own event loop (0 picks a free one; None, the default: no server).
            Never read from the environment: the nodes a node starts (device workers) inherit
            it, and would all want the port. See `numbeam.observer`.
        observer_host: the address the observer binds (default ``127.0.0.1``, this machine
            only; env ``NUMBEAM_OBSERVER_HOST``). Anything wider is an explicit choice.
        process_counters: every process counts the messages it receives and sends
            (``messages_in``, ``messages_out`` of `nb.process_info`) from the node's start
            (env ``NUMBEAM_PROCESS_COUNTERS``). Off by default, since a count per message
            costs a few per cent of a send; a node with ``observer=`` counts from its start,
            and any node starts counting when an observer first looks at it.
        observer_control: let the observer page act (kill a process); off by default, when
            the page only shows (env ``NUMBEAM_OBSERVER_CONTROL``).
    """

    uvloop: bool = True
    run_queue_budget: int = 2000
    shutdown_timeout: float = 5.0
    node: str | None = None
    cookie: str | None = None
    cookie_file: str | None = None
    curve: bool = False
    listen: str | None = None
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    connect_timeout: float = 5.0
    max_message_size: int = 1 << 31
    tensor_threshold: int = 64
    tensor_budget: int | None = None
    tensor_handles: bool = True
    devices: str | list[str] | tuple[str, ...] | None = "auto"
    start_workers: str = "lazy"
    worker_start_timeout: float = 60.0
    offload_threads: int | None = None
    offload_blas_threads: int | None = None
    hidden: bool = False
    observer: int | None = None
    observer_host: str = "127.0.0.1"
    observer_control: bool = False
    process_counters: bool = False

    def __post_init__(self) -> None:
        for name in ("node", "cookie", "cookie_file", "listen"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{name} must be a non-empty str or None, got {value!r}")
        if not isinstance(self.curve, bool):
            raise TypeError(f"curve must be a bool, got {self.curve!r}")
        for name in ("heartbeat_interval", "heartbeat_timeout", "connect_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.heartbeat_timeout < self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must be >= heartbeat_interval "
                f"({self.heartbeat_interval})"
            )
        mms = self.max_message_size
        if not isinstance(mms, int) or isinstance(mms, bool) or mms < 1024:
            raise ValueError(f"max_message_size must be an int >= 1024 bytes, got {mms!r}")
        tt = self.tensor_threshold
        if not isinstance(tt, int) or isinstance(tt, bool) or tt < 0:
            raise ValueError(f"tensor_threshold must be an int >= 0, got {tt!r}")
        tb = self.tensor_budget
        if tb is not None and (not isinstance(tb, int) or isinstance(tb, bool) or tb <= 0):
            raise ValueError(f"tensor_budget must be a number of bytes > 0 or None, got {tb!r}")
        if not isinstance(self.tensor_handles, bool):
            raise TypeError(f"tensor_handles must be a bool, got {self.tensor_handles!r}")
        if self.start_workers not in ("lazy", "eager"):
            raise ValueError(f"start_workers must be 'lazy' or 'eager', got {self.start_workers!r}")
        wst = self.worker_start_timeout
        if not isinstance(wst, (int, float)) or isinstance(wst, bool) or wst <= 0:
            raise ValueError(f"worker_start_timeout must be a number of seconds > 0, got {wst!r}")
        for name in ("offload_threads", "offload_blas_threads"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if self.devices is not None and not isinstance(self.devices, (str, list, tuple)):
            raise TypeError(
                f"devices must be 'auto', a list of device names or [], got {self.devices!r}"
            )
        for name in ("hidden", "observer_control", "process_counters"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        obs = self.observer
        if obs is not None and (
            not isinstance(obs, int) or isinstance(obs, bool) or not 0 <= obs < 65536
        ):
            raise ValueError(f"observer must be a TCP port (0 to 65535) or None, got {obs!r}")
        if not isinstance(self.observer_host, str) or not self.observer_host:
            raise TypeError(f"observer_host must be a non-empty str, got {self.observer_host!r}")
        if not isinstance(self.uvloop, bool):
            raise TypeError(f"uvloop must be a bool, got {self.uvloop!r}")
        if (
            not isinstance(self.run_queue_budget, int)
            or isinstance(self.run_queue_budget, bool)
            or self.run_queue_budget < 1
        ):
            raise ValueError(f"run_queue_budget must be an int >= 1, got {self.run_queue_budget!r}")
        if (
            not isinstance(self.shutdown_timeout, (int, float))
            or isinstance(self.shutdown_timeout, bool)
            or self.shutdown_timeout < 0
        ):
            raise ValueError(
                f"shutdown_timeout must be a number of seconds >= 0, got {self.shutdown_timeout!r}"
            )

    @classmethod
    def resolve(cls, **options: Any) -> NodeOptions:
        """Build options from arguments, then ``NUMBEAM_<NAME>`` variables, then defaults."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(
                f"unknown node option(s) {', '.join(unknown)}; known options: {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name in options:
                values[name] = options[name]
                continue
            if name in ("node", "observer"):
                continue  # named by the program, never by the environment (see above)
            env = os.environ.get(f"NUMBEAM_{name.upper()}")
            if env is None:
                continue
            try:
                if name == "devices":
                    env = env.strip()
                    names = [d.strip() for d in env.split(",") if d.strip()]
                    values[name] = "auto" if env == "auto" else names
                elif f.type == "bool":
                    values[name] = _env_bool(env)
                elif f.type == "int":
                    values[name] = int(env)
                elif f.type == "int | None":
                    values[name] = None if env.strip().lower() in ("", "none") else int(env)
                elif f.type == "float":
                    values[name] = float(env)
                else:
                    values[name] = env
            except ValueError as e:
                raise ValueError(f"bad value in NUMBEAM_{name.upper()}: {e}") from None
        return cls(**values)
