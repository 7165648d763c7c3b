"""The agent on a real single-node Kubernetes: deploy/kubernetes applied as shipped.

What only a real cluster proves: the DaemonSet rolls out and its pod turns Ready on the
node (probes, capabilities, seccomp/AppArmor fields, Pod Security admission); NODE_NAME comes
from the downward API; the shipped RBAC lets the agent watch its node's pods and nothing
more; two ordinary pods exchanging traffic through a Service are named in the agent's
/metrics (fetched through the agent's own Service); a Prometheus with kubernetes_sd_configs
discovers and scrapes the agent; the Collector Deployment receives the agent's OTLP; and when
a pod is replaced, its traffic is attributed to the new pod.

The tests run in file order on one deployment (module fixtures); the last one replaces a pod.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from scripts.cluster import layout as L
from tests.support.agent import total
from tests.support.cluster import Cluster, logs_of, pod_story
from tests.support.prom import PrometheusServer

NS = "otel-netlat"
TRAFFIC = "netlat-traffic"
DEPLOY = L.REPO / "deploy" / "kubernetes"
OVERLAY = L.REPO / "build" / "cluster" / "deploy"
AGENT_SA = f"system:serviceaccount:{NS}:otel-netlat"

#: kube-prometheus-stack's PodMonitor type, which the kustomization lists: a stand-in CRD
#: that accepts the object (the Prometheus operator that would act on it is not part of the test).
PODMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "PodMonitor",
            "listKind": "PodMonitorList",
            "plural": "podmonitors",
            "singular": "podmonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}

#: A TCP echo server, and a client that connects to it through its Service every 0.1 s
#: (bounded: at most 12,000 exchanges or 20 minutes).
SERVER = """
import socketserver
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(4096):
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("", 7000), Echo).serve_forever()
"""
CLIENT = f"""
import socket, time
deadline, n = time.monotonic() + 1200, 0
while time.monotonic() < deadline and n < 12000:
    try:
        with socket.create_connection(("server.{TRAFFIC}.svc.{L.CLUSTER_DOMAIN}", 7000), timeout=2) as s:
            s.sendall(b"x" * 512)
            s.recv(4096)
        n += 1
    except OSError:
        pass
    time.sleep(0.1)
"""


def split_ref(ref: str) -> tuple[str, str]:
    name, _, tag = ref.rpartition(":")
    return name, tag


def shipped_images() -> tuple[str, str]:
    """The image names deploy/kubernetes gives the agent and the Collector (what `images:` replaces)."""
    base = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (agent,) = (i["newName"] for i in base["images"] if i["name"] == "otel-netlat")
    collector = yaml.safe_load((DEPLOY / "collector" / "deployment.yaml").read_text())
    (container,) = collector["spec"]["template"]["spec"]["containers"]
    return agent, split_ref(container["image"])[0]


def write_overlay(cluster: Cluster) -> Path:
    """deploy/kubernetes with the images `make image` built, and two settings of the agent:
    pod attribution on (it is opt-in; the shipped DaemonSet leaves it off), and room for
    100,000 address pairs instead of 2,000 (the agent sees every network namespace of the
    node, and on a machine shared with other tests theirs fill 2,000 pairs within seconds,
    after which the pods' pairs would fold into the overflow series)."""
    agent, collector = split_ref(cluster.image("agent")), split_ref(cluster.image("collector"))
    agent_base, collector_base = shipped_images()
    env = {"NETLAT_POD_ATTRIBUTION": "true", "NETLAT_MAX_SERIES": "100000"}
    patch = [
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": k, "value": v}}
        for k, v in env.items()
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, OVERLAY)],
        "images": [
            {"name": agent_base, "newName": agent[0], "newTag": agent[1]},
            {"name": collector_base, "newName": collector[0], "newTag": collector[1]},
        ],
        "patches": [{"target": {"kind": "DaemonSet", "name": "otel-netlat"}, "patch": yaml.safe_dump(patch)}],
    }
    OVERLAY.mkdir(parents=True, exist_ok=True)
    (OVERLAY / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return OVERLAY


def agent_story(cluster: Cluster) -> str:
    """Why the agent is not Ready: its pods, their events and logs, the node's logs."""
    pods = cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/component=agent").get("items", [])
    logs = cluster.kubectl("logs", "-n", NS, "ds/otel-netlat", "--tail=40", check=False)
    return "\n".join(
        [*(pod_story(cluster, p) for p in pods), f"agent log:\n{logs}", logs_of(cluster.node.layout)]
    )


def daemonset_ready(cluster: Cluster) -> dict | None:
    status = cluster.get("daemonset", "-n", NS, "otel-netlat").get("status", {})
    want = status.get("desiredNumberScheduled", 0)
    ok = want == 1 and status.get("numberReady") == want and status.get("updatedNumberScheduled") == want
    return status if ok else None


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> dict:
    """deploy/kubernetes applied with kustomize; returns the agent's pod once the DaemonSet is Ready."""
    cluster.apply(PODMONITOR_CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/podmonitors.monitoring.coreos.com", "--timeout=60s"
    )
    cluster.kubectl("apply", "-k", str(write_overlay(cluster)))
    cluster.wait_for(
        lambda: daemonset_ready(cluster), 300, "the DaemonSet Ready", detail=lambda: agent_story(cluster)
    )
    cluster.kubectl(
        "rollout", "status", "-n", NS, "deployment/otel-netlat-collector", "--timeout=180s", timeout=200
    )
    (pod,) = cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/component=agent")["items"]
    return pod


def pod(name: str, app: str, code: str, image: str) -> dict:
    """An ordinary pod (no privilege, no host namespace) running ``code`` with the agent image's Python."""
    container = {"name": app, "image": image, "imagePullPolicy": "Never", "command": ["python3", "-c", code]}
    if app == "server":
        container["readinessProbe"] = {"tcpSocket": {"port": 7000}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": TRAFFIC, "labels": {"app": app}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [container]},
    }


def start_pod(cluster: Cluster, name: str, app: str) -> str:
    """Create the pod and wait until it is Ready; its IP."""
    cluster.apply(pod(name, app, SERVER if app == "server" else CLIENT, cluster.image("agent")))
    return cluster.wait_pod_ready(TRAFFIC, name)["status"]["podIP"]


@pytest.fixture(scope="module")
def traffic(cluster: Cluster, deployed: dict) -> dict[str, str]:
    """server-a and client-a exchanging TCP through the Service "server"; pod name → IP."""
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRAFFIC}})
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "server", "namespace": TRAFFIC},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 7000, "targetPort": 7000}]},
        }
    )
    return {
        name: start_pod(cluster, name, app) for name, app in (("server-a", "server"), ("client-a", "client"))
    }


def pod_packets(metrics: dict, name: str) -> float:
    """netlat_packets_total attributed to the traffic namespace's pod ``name``."""
    return total(metrics, "netlat_packets_total", k8s_namespace_name=TRAFFIC, k8s_pod_name=name)


def agent_metrics(cluster: Cluster) -> dict:
    """The agent's /metrics through its (headless) Service, by the API server's service proxy."""
    return cluster.service_metrics(NS, "otel-netlat", "metrics")


def test_daemonset_ready_with_node_name_from_the_downward_api(cluster: Cluster, deployed: dict):
    assert deployed["spec"]["nodeName"] == L.NODE_NAME
    assert daemonset_ready(cluster)
    logs = cluster.kubectl("logs", "-n", NS, deployed["metadata"]["name"])
    assert f"pod attribution on: watching the pods of node {L.NODE_NAME}" in logs, logs[-3000:]


def test_shipped_rbac_allows_the_pod_watch_and_nothing_else(cluster: Cluster, deployed: dict):
    def can(*args: str) -> str:
        return cluster.kubectl("auth", "can-i", *args, f"--as={AGENT_SA}", check=False).strip()

    assert [can(verb, "pods", "--all-namespaces") for verb in ("get", "list", "watch")] == ["yes"] * 3
    assert can("create", "pods", "-n", TRAFFIC) == "no"
    assert can("list", "secrets", "-n", NS) == "no"
    assert can("list", "nodes") == "no"


def test_metrics_through_the_service_name_real_pods(cluster: Cluster, traffic: dict[str, str]):
    def both_named() -> dict | None:
        m = agent_metrics(cluster)
        return m if pod_packets(m, "server-a") > 0 and pod_packets(m, "client-a") > 0 else None

    what = "server-a's and client-a's packets in the agent's /metrics"
    metrics = cluster.wait_for(both_named, 120, what, detail=lambda: attribution_story(cluster))
    # Names come from the API: every attributed series is one of the pods that exist
    # (unattributed series carry no name, or an empty one).
    named = {
        dict(labels).get("k8s_pod_name") for (n, labels), _ in metrics.items() if n == "netlat_packets_total"
    }
    assert {"server-a", "client-a"} <= named
    assert named - {None, ""} <= {"server-a", "client-a", *pod_names(cluster, NS)}, named


def attribution_story(cluster: Cluster) -> str:
    """What the agent names, and what it and the client said, when a pod is not named."""
    m = agent_metrics(cluster)
    named: dict[str, float] = {}
    for (n, labels), v in m.items():
        if n == "netlat_packets_total":
            pod = str(dict(labels).get("k8s_pod_name"))
            named[pod] = named.get(pod, 0) + v
    agent = cluster.kubectl("logs", "-n", NS, "ds/otel-netlat", "--tail=30", check=False)
    client = cluster.kubectl("logs", "-n", TRAFFIC, "client-a", "--tail=10", check=False)
    pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False)
    return f"packets by pod: {named}\nagent:\n{agent}\nclient:\n{client}\n{pods}"


def pod_names(cluster: Cluster, namespace: str) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.get("pods", "-n", namespace)["items"]}


def prometheus_config(cluster: Cluster, token: Path) -> dict:
    """Two jobs found by kubernetes_sd_configs: deploy/README.md's pod job (the PodMonitor in
    plain Prometheus terms) and the agent's Service endpoints."""
    sd = {
        "api_server": f"https://{L.NODE_IP}:{L.API_PORT}",
        "tls_config": {"ca_file": str(cluster.node.layout.pki / "ca.crt")},
        "authorization": {"credentials_file": str(token)},
        "namespaces": {"names": [NS]},
    }
    node_label = {
        "action": "replace",
        "source_labels": ["__meta_kubernetes_pod_node_name"],
        "target_label": "k8s_node_name",
    }
    return {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {
                "job_name": "otel-netlat",
                "kubernetes_sd_configs": [{**sd, "role": "pod"}],
                "relabel_configs": [
                    {
                        "action": "keep",
                        "source_labels": [
                            "__meta_kubernetes_pod_label_app_kubernetes_io_component",
                            "__meta_kubernetes_pod_container_port_name",
                        ],
                        "regex": "agent;metrics",
                    },
                    node_label,
                ],
            },
            {
                "job_name": "otel-netlat-service",
                "kubernetes_sd_configs": [{**sd, "role": "endpoints"}],
                "relabel_configs": [
                    {
                        "action": "keep",
                        "source_labels": [
                            "__meta_kubernetes_service_name",
                            "__meta_kubernetes_endpoint_port_name",
                        ],
                        "regex": "otel-netlat;metrics",
                    },
                    node_label,
                ],
            },
        ],
    }


def prometheus_token(cluster: Cluster, path: Path) -> Path:
    """A service account that may only discover (get/list/watch pods, services, endpoints)."""
    cluster.apply(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "netlat-monitoring"}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "prometheus", "namespace": "netlat-monitoring"},
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "netlat-prometheus"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "resources": ["pods", "services", "endpoints"],
                            "verbs": ["get", "list", "watch"],
                        }
                    ],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "netlat-prometheus"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "netlat-prometheus",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "netlat-monitoring"}
                    ],
                },
            ]
        )
    )
    path.write_text(
        cluster.kubectl("create", "token", "prometheus", "-n", "netlat-monitoring", "--duration=2h").strip()
    )
    return path


def test_prometheus_discovers_and_scrapes_the_agent(
    cluster: Cluster, traffic: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The Prometheus scripts/cluster/build.sh built: Debian's has no Kubernetes discovery.
    monkeypatch.setenv("PATH", f"{cluster.node.layout.bin}{os.pathsep}{os.environ['PATH']}")
    config = prometheus_config(cluster, prometheus_token(cluster, tmp_path / "token"))
    prometheus = PrometheusServer([], tmp_path, config=config)
    try:
        for job in ("otel-netlat", "otel-netlat-service"):
            up = prometheus.wait_for(
                f'up{{job="{job}"}}', lambda r: len(r) == 1 and r[0]["value"][1] == "1", 90
            )
            assert up[0]["metric"]["k8s_node_name"] == L.NODE_NAME
            assert up[0]["metric"]["instance"] == f"{traffic_agent_ip(cluster)}:2112"
        prometheus.wait_for(
            f'sum(netlat_packets_total{{job="otel-netlat",k8s_namespace_name="{TRAFFIC}",k8s_pod_name="server-a"}})',
            lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0,
            60,
        )
    finally:
        prometheus.stop()


def traffic_agent_ip(cluster: Cluster) -> str:
    (agent,) = cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/component=agent")["items"]
    return agent["status"]["podIP"]


def test_the_collector_deployment_receives_otlp(cluster: Cluster, traffic: dict[str, str]):
    """The agent pushes OTLP to the Collector Service by its DNS name (CoreDNS, kube-proxy);
    the Collector's Prometheus exporter then shows the agent's series, with the node's name
    from the agent's resource (k8s.node.name, from NODE_NAME) and the pods' names."""

    def received() -> dict | None:
        m = cluster.service_metrics(NS, "otel-netlat-collector", "prometheus")
        server = total(m, "netlat_packets_total", k8s_node_name=L.NODE_NAME, k8s_pod_name="server-a")
        return m if server > 0 else None

    # The agent exports every 60 s (the OTLP SDK's default interval): allow several rounds.
    cluster.wait_for(received, 240, "server-a's packets, pushed by OTLP, at the Collector's exporter")


def test_attribution_follows_a_replaced_pod(cluster: Cluster, traffic: dict[str, str]):
    cluster.kubectl("delete", "pod", "-n", TRAFFIC, "server-a", "--wait=true", "--timeout=60s")
    start_pod(cluster, "server-b", "server")  # the client reaches it through the same Service

    def follows() -> tuple[float, float] | None:
        m = agent_metrics(cluster)
        return (
            (pod_packets(m, "server-a"), pod_packets(m, "server-b"))
            if pod_packets(m, "server-b") > 0
            else None
        )

    old, new = cluster.wait_for(follows, 120, "server-b's packets in the agent's /metrics")
    # server-b keeps receiving; nothing more is counted for the pod that is gone.
    later = cluster.wait_for(lambda: (v := follows()) and v[1] > new and v, 120, "server-b's packets to grow")
    assert later[0] == old, f"packets still attributed to the deleted server-a: {old} -> {later[0]}"
