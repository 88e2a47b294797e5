"""Shared test helpers. Every test runs its own node with `async with nb.Runtime():`."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def crash_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture numbeam's crash reports (logger "numbeam")."""
    caplog.set_level(logging.ERROR, logger="numbeam")
    return caplog
