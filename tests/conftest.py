"""Shared pytest configuration.

Tests sit in one of three folders, and the folder is the marker (``-m unit|kernel|e2e``):

- ``tests/unit``: pure Python, no root, no kernel state (fake kernels for the plan);
- ``tests/kernel``: reads the running kernel's BTF or loads BPF programs, in process,
  with packets between namespaces the test makes (needs root);
- ``tests/e2e``: runs the agent, Prometheus, the Collector or a container as processes.

Fixtures live in ``tests/support/*`` (namespaces, processes, agent, Prometheus, Collector)
and are registered here once. In CI (``CI=true``) a skipped test is a failure: kernel,
namespace, Prometheus and Collector tests must run or fail loudly, never skip silently.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.support.netns",
    "tests.support.topology",
    "tests.support.kernel",
    "tests.support.process",
    "tests.support.agent",
    "tests.support.prom",
    "tests.support.collector",
]


KINDS = ("unit", "kernel", "e2e")


def pytest_collection_modifyitems(config, items):
    """Mark every test by its folder; a test outside the three folders is an error."""
    for item in items:
        kind = item.path.parent.name
        if kind not in KINDS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/kernel or tests/e2e")
        item.add_marker(getattr(pytest.mark, kind))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI, which must run every test: {reason}"
