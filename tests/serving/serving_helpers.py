"""What the serving tests run on other nodes, by module path (``serving_helpers:predict``)."""

from __future__ import annotations

import numpy as np


def predict(batch: np.ndarray) -> np.ndarray:
    """Twice the input; a negative input fails its whole batch."""
    if (batch < 0).any():
        raise ArithmeticError(f"negative input in a batch of {len(batch)}")
    return batch * 2
