"""numbeam: Erlang/OTP processes and supervisors for numerical Python, on asyncio.

    import numbeam as nb

    async def main():
        pid = nb.spawn(echo)
        nb.send(pid, (nb.self(), "hello"))
        print(await nb.receive(timeout=1))

    nb.run(main)

Every public name is re-exported here; the subpackages' private modules are not API.
"""

import logging as _logging

import numbeam.cluster as cluster
import numbeam.testing as testing
from numbeam import gpu, observer, pipeline, telemetry, tensors
from numbeam.actors import (
    NOREPLY,
    Agent,
    CallError,
    Down,
    Exit,
    GenServer,
    NodeDown,
    NodeOptions,
    NoProc,
    Pid,
    Ref,
    RemoteError,
    Runtime,
    StartError,
    Stop,
    Task,
    TimerRef,
    call,
    cancel_timer,
    cast,
    demonitor,
    device,
    devices,
    exit,
    is_alive,
    is_normal_exit,
    link,
    make_ref,
    monitor,
    node,
    offload,
    process_info,
    processes,
    receive,
    register,
    registered,
    reply,
    run,
    self,
    send,
    send_after,
    spawn,
    spawn_link,
    spawn_monitor,
    stop,
    trap_exit,
    unlink,
    unregister,
    whereis,
)
from numbeam.pipeline import Pipeline
from numbeam.supervision import Child, DynamicSupervisor, Supervisor
from numbeam.tensors import Tensor, tensor
from numbeam.transport import (
    connect,
    disconnect,
    global_register,
    global_registered,
    global_unregister,
    global_whereis,
    monitor_node,
    nodes,
    pg,
)

# isort: split
# (serving builds on all of the above; a line of its own keeps mypy's import cycle resolvable)
from numbeam import serving
from numbeam.serving import Overloaded, Serving

_logging.getLogger("numbeam").addHandler(_logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "NOREPLY",
    "Agent",
    "CallError",
    "Child",
    "Down",
    "DynamicSupervisor",
    "Exit",
    "GenServer",
    "NoProc",
    "NodeDown",
    "NodeOptions",
    "Overloaded",
    "Pid",
    "Pipeline",
    "Ref",
    "RemoteError",
    "Runtime",
    "Serving",
    "StartError",
    "Stop",
    "Supervisor",
    "Task",
    "Tensor",
    "TimerRef",
    "call",
    "cancel_timer",
    "cast",
    "cluster",
    "connect",
    "demonitor",
    "device",
    "devices",
    "disconnect",
    "exit",
    "global_register",
    "global_registered",
    "global_unregister",
    "global_whereis",
    "gpu",
    "is_alive",
    "is_normal_exit",
    "link",
    "make_ref",
    "monitor",
    "monitor_node",
    "node",
    "nodes",
    "observer",
    "offload",
    "pg",
    "pipeline",
    "process_info",
    "processes",
    "receive",
    "register",
    "registered",
    "reply",
    "run",
    "self",
    "send",
    "send_after",
    "serving",
    "spawn",
    "spawn_link",
    "spawn_monitor",
    "stop",
    "telemetry",
    "tensor",
    "tensors",
    "testing",
    "trap_exit",
    "unlink",
    "unregister",
    "whereis",
]
