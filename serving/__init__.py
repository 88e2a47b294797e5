"""numbeam.serving: batched model serving over partitions, devices and nodes (Nx.Serving).

``nb.Serving.start_link(predict, name=...)`` starts a serving; ``await nb.serving.run(name,
x)``, ``run_batch(name, xs)`` and ``stats(name)`` use it from any process of the cluster.
`Serving` and `Overloaded` are re-exported from `numbeam`; import it as ``import numbeam as nb``.
"""

from ._client import Overloaded, run, run_batch, stats
from ._server import Serving

__all__ = ["Overloaded", "Serving", "run", "run_batch", "stats"]
