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
    """

    uvloop: bool = True
    run_queue_budget: int = 2000
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
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
            env = os.environ.get(f"NUMBEAM_{name.upper()}")
            if env is None:
                continue
            try:
                if f.type == "bool":
                    values[name] = _env_bool(env)
                elif f.type == "int":
                    values[name] = int(env)
                else:
                    values[name] = float(env)
            except ValueError as e:
                raise ValueError(f"bad value in NUMBEAM_{name.upper()}: {e}") from None
        return cls(**values)
