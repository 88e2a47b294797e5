"""The ``numbeam`` command: ``--version``, ``demo``, ``node``, ``ping`` and ``devices``.

The library only attaches a NullHandler to the "numbeam" logger, so that an application decides
where crash reports go; this command is such an application, and configures logging for what
it runs. The demo is `examples/supervised_pool.py` of a source checkout (examples are programs
to read, not part of the installed package), run as if by ``python examples/...``.

``numbeam node`` is a node with nothing of its own to run: it serves remote spawns (the runtime
does that by itself) until SIGINT or SIGTERM, then shuts down cleanly. Its stdout carries only
its ready line and ``ping``'s only ``pong`` or ``pang``, so scripts can read them; logs go to
stderr. The cookie comes from the node options: ``NUMBEAM_COOKIE``, ``--cookie-file`` (or
``NUMBEAM_COOKIE_FILE``), else ``~/.numbeam.cookie``; there is no ``--cookie``, since a
command line is visible to every user of the machine.

``numbeam devices`` lists the devices a node would drive (``devices="auto"``: CUDA through
CuPy, plus ``NUMBEAM_FAKE_DEVICES``); with ``--start`` it starts one worker per device, waits
until each runs, prints them, and stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import runpy
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

import numbeam as nb
from numbeam._cli_support import connect_within, until_signalled

DEMO = Path(__file__).resolve().parent.parent / "examples" / "supervised_pool.py"

# What starting a node can fail with for reasons the user can fix: bad options, an unreadable
# or too permissive cookie file, an address in use. They get a one-line message, not a traceback.
_STARTUP_ERRORS = (OSError, ValueError, TypeError, zmq.ZMQError)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cookie-file",
        metavar="F",
        help="read the cookie from F, creating it with a random cookie and mode 0600 if missing "
        "(default: $NUMBEAM_COOKIE, else $NUMBEAM_COOKIE_FILE, else ~/.numbeam.cookie)",
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="encrypt connections with ZeroMQ CURVE, keyed by the cookie (all nodes must agree)",
    )


def _node_options(args: argparse.Namespace) -> dict[str, Any]:
    """The node options given on the command line; the others keep their NUMBEAM_* or default."""
    options: dict[str, Any] = {}
    if args.cookie_file is not None:
        options["cookie_file"] = args.cookie_file
    if args.curve:
        options["curve"] = True
    if getattr(args, "listen", None) is not None:
        options["listen"] = args.listen
    if getattr(args, "observer", None) is not None and args.command == "node":
        options["observer"] = args.observer
    if getattr(args, "observer_host", None) is not None:
        options["observer_host"] = args.observer_host
    devices = getattr(args, "devices", None)
    if devices is not None:
        options["devices"] = "auto" if devices == "auto" else [d for d in devices.split(",") if d]
    return options


def _describe(device: str) -> str:
    kind, index = nb.gpu._devices.parse_device(device)
    if kind == "fake":
        return "fake device (CPU-backed, shared memory of its own)"
    import cupy  # type: ignore[import-not-found]  # (a cuda device: CuPy found it)

    props = cupy.cuda.runtime.getDeviceProperties(index)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"{name}, {props['totalGlobalMem'] / 2**30:.1f} GiB"


async def _devices(start: bool, timeout: float) -> int:
    found = nb.devices()
    if not found:
        print("no devices (no CUDA device visible; set NUMBEAM_FAKE_DEVICES=N for fake ones)")
        return 0
    if not start:
        for d in found:
            print(f"{d}\t{_describe(d)}")
        return 0
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    workers = await nb.gpu.start(timeout=timeout)
    took = loop.time() - t0
    for d, w in workers.items():
        print(f"{d}\t{w['status']}\tos pid {w['os_pid']}\t{w['node']}\t{_describe(d)}")
    print(f"{len(workers)} worker(s) running after {took:.2f} s")
    return 0


async def _serve(join: str | None = None) -> None:
    """Announce the node, then wait for SIGINT or SIGTERM; returning stops the node cleanly."""
    if join is not None:  # --join SPEC: keep connected to the nodes it names (a bad one: exit 1)
        nb.cluster.join(join)
    await until_signalled(lambda: print(f"numbeam node {nb.node()} ready", flush=True))


def _report(command: str, error: BaseException, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(f"numbeam {command}: {error}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="numbeam", description="Erlang/OTP processes and supervisors for numerical Python."
    )
    parser.add_argument("--version", action="version", version=f"numbeam {nb.__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG level instead of INFO"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="run the supervised worker pool demo")

    node = commands.add_parser(
        "node",
        help="start a node that serves remote spawns until interrupted",
        description="Start a node that serves remote spawns. It prints "
        "`numbeam node NAME ready` (NAME with its real port) once it accepts connections, "
        "and stops cleanly on SIGINT (Ctrl-C) or SIGTERM.",
    )
    node.add_argument(
        "--name",
        required=True,
        metavar="NAME",
        help="name@host:port (port 0 picks a free one), name@ipc:///path, or just name "
        "(127.0.0.1 and a free port)",
    )
    _add_security_options(node)
    node.add_argument(
        "--listen",
        metavar="HOST",
        help="host to bind instead of the one in NAME, e.g. 0.0.0.0 to accept other machines "
        "(NAME stays the address peers connect to)",
    )
    node.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="prepend DIR to sys.path, so that functions there can be spawned on this node by "
        "module path (repeatable; the first given comes first)",
    )

    node.add_argument(
        "--join",
        metavar="SPEC",
        help="stay connected to the nodes SPEC names, reconnecting with backoff: "
        "static:a@h:p,b@h:p, file:PATH (one node name per line, re-read on change), "
        "dns:NAME:PORT (the A/AAAA records of NAME, e.g. a Kubernetes headless Service) or "
        "slurm (the hosts of $SLURM_JOB_NODELIST, on this node's port)",
    )

    ping = commands.add_parser(
        "ping",
        help="check that a node answers: prints pong (exit 0) or pang (exit 1)",
        description="Connect to node NAME from a throwaway node and print pong (exit 0) if the "
        "handshake succeeds, else pang (exit 1), like Erlang's net_adm:ping. Exit 2 means the "
        "ping could not be attempted (bad arguments or cookie).",
    )
    ping.add_argument("name", metavar="NAME", help="the node to ping, e.g. b@127.0.0.1:9101")
    _add_security_options(ping)
    ping.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for an answer (default: 5)",
    )
    node.add_argument(
        "--devices",
        metavar="LIST",
        help="the devices this node drives: auto (CUDA devices, plus NUMBEAM_FAKE_DEVICES), a "
        "comma-separated list such as cuda:0,fake:0, or '' for none (default: auto)",
    )

    devices = commands.add_parser(
        "devices",
        help="list the devices a node here would drive; --start starts their workers",
        description="List the devices a node on this machine drives with devices='auto': every "
        "CUDA device CuPy sees, plus fake:0..N-1 when NUMBEAM_FAKE_DEVICES=N. With --start, "
        "start one worker node per device, wait until each runs, print them, and stop them.",
    )
    devices.add_argument("--start", action="store_true", help="start and show the workers")
    devices.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="seconds to wait for the workers to start (default: 60)",
    )
    _add_observer_commands(commands, node)
    args = parser.parse_args(argv)

    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)-7s %(name)s: %(message)s",
        # node and ping keep stdout for what scripts read; the demo is for a person to watch
        stream=sys.stdout if args.command == "demo" else sys.stderr,
    )
    if args.command == "demo":
        if not DEMO.is_file():
            print(
                f"numbeam demo: {DEMO} not found; the demo ships with the source checkout: "
                "clone the repository and run `python examples/supervised_pool.py`",
                file=sys.stderr,
            )
            return 1
        runpy.run_path(str(DEMO), run_name="__main__")
        return 0

    if args.command == "devices":
        try:
            return nb.run(_devices, args.start, args.timeout)  # type: ignore[no-any-return]
        except _STARTUP_ERRORS as e:
            _report("devices", e, args.verbose)
            return 1
        except TimeoutError:
            print(
                f"numbeam devices: workers not all running after {args.timeout} s", file=sys.stderr
            )
            return 1

    options = _node_options(args)
    if args.command in ("observer", "remsh"):
        return _run_observer_command(args, options)
    if args.command == "node":
        sys.path[:0] = [os.path.abspath(d) for d in args.path]
        try:
            nb.run(_serve, args.join, node=args.name, **options)
        except _STARTUP_ERRORS as e:
            _report("node", e, args.verbose)
            return 1
        except KeyboardInterrupt:  # Ctrl-C before the node was up
            return 130
        return 0

    try:
        throwaway = f"ping{os.getpid()}@127.0.0.1:0"
        ok = nb.run(connect_within, args.name, args.timeout, node=throwaway, devices=[], **options)
    except _STARTUP_ERRORS as e:
        _report("ping", e, args.verbose)
        return 2
    except KeyboardInterrupt:
        return 130
    print("pong" if ok else "pang", flush=True)
    return 0 if ok else 1


def _add_observer_commands(commands: Any, node: argparse.ArgumentParser) -> None:
    """``numbeam observer NODE`` and ``numbeam remsh NODE`` (see numbeam.observer), and
    ``numbeam node --observer PORT``."""
    node.add_argument(
        "--observer",
        type=int,
        metavar="PORT",
        help="serve the live observer page and Prometheus /metrics on PORT (0: a free one; "
        "its address is logged)",
    )
    node.add_argument(
        "--observer-host",
        metavar="HOST",
        help="address the observer binds (default 127.0.0.1: this machine only; e.g. 0.0.0.0 "
        "for a Prometheus server elsewhere)",
    )
    for command, summary in (
        ("observer", "serve the live observer page for the cluster NODE belongs to"),
        ("remsh", "an asyncio REPL (await at the prompt) in the cluster NODE belongs to"),
    ):
        p = commands.add_parser(
            command,
            help=summary,
            description=f"Join NODE's cluster as a hidden node (not listed by nb.nodes(), "
            f"introduced to nobody) and {summary.split(' ', 1)[1]}.",
        )
        p.add_argument("target", metavar="NODE", help="a node of the cluster, name@host:port")
        _add_security_options(p)
        p.add_argument(
            "--name",
            metavar="NAME",
            help=f"this hidden node's name (default: {command}<os pid>@127.0.0.1:0; give a "
            "host the cluster can reach when NODE is on another machine)",
        )
        p.add_argument(
            "--timeout",
            type=_seconds,
            default=10.0,
            metavar="S",
            help="seconds to wait for the connection to NODE (default: 10)",
        )
        if command == "observer":
            p.add_argument(
                "--port", type=int, default=0, metavar="P", help="TCP port (default: a free one)"
            )
            p.add_argument(
                "--host",
                default="127.0.0.1",
                metavar="HOST",
                help="address to bind (default 127.0.0.1: this machine only)",
            )
            p.add_argument(
                "--control",
                action="store_true",
                help="let the page act on processes (kill); off by default",
            )


def _run_observer_command(args: argparse.Namespace, options: dict[str, Any]) -> int:
    from numbeam.observer import _cli

    name = args.name or f"{args.command}{os.getpid()}@127.0.0.1:0"
    options.update(node=name, hidden=True, devices=[])
    if args.command == "observer":
        options.update(observer=args.port, observer_host=args.host, observer_control=args.control)
        main_fn: Any = _cli.observe
    else:
        main_fn = _cli.remsh
    try:
        return nb.run(main_fn, args.target, args.timeout, **options)  # type: ignore[no-any-return]
    except _STARTUP_ERRORS as e:
        _report(args.command, e, args.verbose)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
