"""numbeam.cluster: cluster formation, as Elixir's libcluster does it.

``nb.cluster.join(spec)`` keeps this node connected to the nodes a spec names (a static list, a
hosts file, the A/AAAA records of a DNS name such as a Kubernetes headless Service, or the hosts
of a Slurm job), reconnecting with backoff; ``numbeam node --join SPEC`` does it from the
command line. ``nb.cluster.expand_hostlist`` expands Slurm's ``gpu[01-04,07]`` syntax.
"""

from ._hostlist import expand_hostlist
from ._join import join

__all__ = ["expand_hostlist", "join"]
