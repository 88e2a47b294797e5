"""``nb.telemetry``: attach handlers to the events the runtime emits (Elixir's ``:telemetry``).

    def on_exit(event, measurements, metadata):
        print(metadata["pid"], metadata["reason"], measurements["duration"])

    nb.telemetry.attach("my-exits", ("numbeam", "process", "exit"), on_exit)
    ...
    nb.telemetry.detach("my-exits")

Handlers run synchronously where the event happens; one that raises is detached and logged.
With nothing attached, emitting costs one truth test of an empty dict. The events, their
measurements and metadata are listed in `numbeam.actors._telemetry`'s docstring and README
("Observing a live system"). Libraries emit their own events with `execute`.
"""

from numbeam.actors._telemetry import attach, attach_many, detach, execute, list_handlers

__all__ = ["attach", "attach_many", "detach", "execute", "list_handlers"]
