"""Test-suite policy: privileged tests skip without root on a developer's machine,
and fail instead of skipping under CI=true (CI runs as root, so a skip there means
something is broken)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.kernel", "pytester"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") and os.geteuid() != 0:
        pytest.skip("needs root and real kernel features")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and item.get_closest_marker("privileged"):
        report.outcome = "failed"
        report.longrepr = f"privileged test skipped under CI=true: {report.longrepr}"


def _hypothesis_profiles() -> None:
    from hypothesis import settings

    # No deadlines (the machine is shared and noisy); in CI the examples are derived
    # from the test itself, so a run is reproducible.
    settings.register_profile("dev", deadline=None)
    settings.register_profile("ci", deadline=None, derandomize=True, database=None)
    settings.load_profile("ci" if IN_CI else "dev")


_hypothesis_profiles()
