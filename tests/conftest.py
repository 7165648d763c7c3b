"""Shared pytest configuration.

Fixtures live in ``tests/support/*`` (namespaces, agent process, Prometheus, Collector) and
are registered here once. In CI (``CI=true``) a skipped test is a failure: kernel,
namespace, Prometheus and Collector tests must run or fail loudly, never skip silently.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.support.netns",
    "tests.support.kernel",
    "tests.support.agent",
    "tests.support.prom",
    "tests.support.collector",
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI, which must run every test: {reason}"
