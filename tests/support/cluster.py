"""A real single-node Kubernetes for tests/cluster (``make test-cluster``, NETLAT_CLUSTER=1).

The node itself is scripts/cluster/node.py (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet, kube-proxy and CoreDNS built from Go modules, Debian's containerd and
CNI plugins); this module gives tests the fixture that starts it once per module and tears it
down after, failing the run if anything of it is left, and the waits tests need on top of
kubectl. ``make test-cluster`` builds what the fixture needs first (scripts/cluster/cluster.mk).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.cluster import layout as L
from scripts.cluster.node import Node, read_images
from tests.support.agent import parse_metrics
from tests.support.wait import poll_until

START_TIMEOUT = 600.0  # a cold API server on 2 busy cores needs minutes, not seconds


class Cluster:
    """A running node, its images, and the tests' view of it."""

    def __init__(self, node: Node, images: dict[str, tuple[str, Path]]) -> None:
        self.node = node
        self.images = images

    def image(self, name: str) -> str:
        """The reference of an image loaded into containerd: agent, collector or pause."""
        return self.images[name][0]

    def kubectl(self, *args: str, **kwargs) -> str:
        return self.node.kubectl(*args, **kwargs)

    def get(self, *args: str) -> dict:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, manifest: dict | str) -> str:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text)

    def service_metrics(self, namespace: str, service: str, port: str, path: str = "metrics") -> dict:
        """A Service's Prometheus page, fetched through the API server's service proxy (which
        picks one of the Service's endpoints), parsed by tests.support.agent.parse_metrics."""
        body = self.node.api_get(f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{path}")
        return parse_metrics(body.decode())

    def wait_pod_ready(self, namespace: str, name: str, timeout: float = 180.0) -> dict:
        """The pod once its Ready condition is True (its last state in the failure otherwise)."""
        seen: list[dict] = [{}]

        def ready() -> dict | None:
            seen[0] = self.get("pod", "-n", namespace, name)
            conditions = {c["type"]: c["status"] for c in seen[0].get("status", {}).get("conditions", [])}
            return seen[0] if conditions.get("Ready") == "True" else None

        return poll_until(
            ready, timeout, f"pod {namespace}/{name} Ready", every=1, detail=lambda: pod_story(self, seen[0])
        )

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str, **kwargs) -> object:
        return poll_until(predicate, timeout, what, every=1, **kwargs)


def pod_story(cluster: Cluster, pod: dict) -> str:
    """What explains a pod that is not Ready: its status and its namespace's events."""
    status = json.dumps(pod.get("status", {}), indent=1)[:3000]
    ns = pod.get("metadata", {}).get("namespace", "default")
    events = cluster.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False)
    return f"status: {status}\nevents:\n{events[-3000:]}"


def logs_of(layout: L.Layout, names: tuple[str, ...] = ("kubelet", "containerd"), chars: int = 2000) -> str:
    """The tails of the node daemons' logs, for failures that are the node's own."""
    parts = []
    for name in names:
        path = layout.logs / f"{name}.log"
        if path.exists():
            parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(require_root) -> Iterator[Cluster]:
    """The node, up with the images `make test-cluster` saved; down after the module, and
    nothing of it may remain (processes, mounts, cgroups, network namespace, state)."""
    try:
        images = read_images()
    except RuntimeError as e:
        pytest.fail(str(e))
    node = Node(start_timeout=START_TIMEOUT)
    node.up(images)
    try:
        yield Cluster(node, images)
    finally:
        left = node.down()
        assert not left, f"the cluster's teardown left: {left}"
