"""tests/cluster: a real single-node Kubernetes (scripts/cluster/node.py), only under
``make test-cluster`` (NETLAT_CLUSTER=1; tests/conftest.py ignores this folder otherwise)."""

from __future__ import annotations

from tests.support.cluster import cluster  # noqa: F401 — the fixture, for this folder's tests


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs a real single-node Kubernetes (make test-cluster)")
