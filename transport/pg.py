"""Process groups across the cluster, as Erlang's ``pg``: ``nb.pg.join(group, pid)``,
``nb.pg.members(group)``, ``nb.pg.monitor(group)``... (see `numbeam.transport._pg`)."""

from ._pg import (
    Join,
    Leave,
    demonitor,
    join,
    leave,
    local_members,
    members,
    monitor,
    which_groups,
)

__all__ = [
    "Join",
    "Leave",
    "demonitor",
    "join",
    "leave",
    "local_members",
    "members",
    "monitor",
    "which_groups",
]
