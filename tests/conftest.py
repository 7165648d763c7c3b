"""Shared pytest configuration.

Tests sit in one of three folders, and the folder is the marker (``-m unit|kernel|e2e``):

- ``tests/unit``: pure Python, no root, no kernel state (fake kernels for the plan);
- ``tests/kernel``: reads the running kernel's BTF or loads BPF programs, in process,
  with packets between namespaces the test makes (needs root);
- ``tests/e2e``: runs the agent, Prometheus, the Collector or a container as processes;
- ``tests/vm``: needs what only the Debian test kernels have (netem); collected only inside
  them (``make test-kernels``, ``NETLAT_VM=1``).

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
    "tests.support.pod_net",
    "tests.support.nics",
]


KINDS = ("unit", "kernel", "e2e", "vm", "cluster")
#: tests/vm needs what only the Debian test kernels have (netem): collected inside them only.
collect_ignore = [] if os.environ.get("NETLAT_VM") == "1" else ["vm"]
#: tests/cluster needs a real single-node Kubernetes: collected under make test-cluster only.
if os.environ.get("NETLAT_CLUSTER") != "1":
    collect_ignore.append("cluster")


def pytest_collection_modifyitems(config, items):
    """Mark every test by its folder; a test outside the three folders is an error."""
    for item in items:
        kind = item.path.parent.name
        if kind not in KINDS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in tests/unit, tests/kernel, tests/e2e or tests/vm"
            )
        item.add_marker(getattr(pytest.mark, kind))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI, which must run every test: {reason}"
