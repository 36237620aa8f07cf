"""Fixtures of the xDS tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.xds.harness import ControlPlane


@pytest.fixture
def control() -> Iterator[ControlPlane]:
    """tulle-control's ADS server on its own event-loop thread, stopped after the test."""
    cp = ControlPlane()
    try:
        yield cp
    finally:
        cp.close()
