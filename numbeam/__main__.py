"""The ``numbeam`` command: ``numbeam --version`` and ``numbeam demo``.

The library only attaches a NullHandler to the "numbeam" logger, so that an application decides
where crash reports go; this command is such an application, and configures logging for what
it runs. The demo is `examples/supervised_pool.py` of a source checkout (examples are programs
to read, not part of the installed package), run as if by ``python examples/...``.
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import numbeam

DEMO = Path(__file__).resolve().parent.parent / "examples" / "supervised_pool.py"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="numbeam", description="Erlang/OTP processes and supervisors for numerical Python."
    )
    parser.add_argument("--version", action="version", version=f"numbeam {numbeam.__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG level instead of INFO"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="run the supervised worker pool demo")
    args = parser.parse_args(argv)

    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)-7s %(name)s: %(message)s",
        stream=sys.stdout,
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


if __name__ == "__main__":
    sys.exit(main())
