"""numbeam.gpu: devices (``cuda:N`` through CuPy, ``fake:N`` on the CPU) and their workers.

A node drives its devices (node option ``devices``) through one worker node per device, a
child OS process that a supervisor of the node restarts when it dies; processes spawned with
``device=`` run there. ``nb.devices()`` lists a node's devices, ``nb.device()`` names the one
the calling code runs on, `workers` shows each worker, and `start` starts them and waits.
"""

from ._workers import start, workers

__all__ = ["start", "workers"]
