"""numbeam.supervision: Supervisor, DynamicSupervisor and their child specs.

Everything public is re-exported from `numbeam`; import it as ``import numbeam as nb``.
"""

from ._child import Child
from ._dynamic import DynamicSupervisor
from ._supervisor import Supervisor

__all__ = ["Child", "DynamicSupervisor", "Supervisor"]
