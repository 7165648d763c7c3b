"""Every query of the Grafana dashboard, run against a real Prometheus that scraped the agent.

Prometheus scrapes the agent the way the PodMonitor makes kube-prometheus-stack do it: the
target carries ``__meta_kubernetes_pod_node_name`` (as Kubernetes service discovery would
set it) and the PodMonitor's own relabelings, translated to Prometheus' configuration, turn
it into the ``k8s_node_name`` label the dashboard filters on. The dashboard's variables are
resolved from their own queries; every panel target, with them substituted as Grafana
would, must return data. One quantile panel is checked against the same quantile computed
from the agent's own /metrics.
"""

from __future__ import annotations

import json
import math
import re
import socket
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.test_deploy import NODE_LABEL, one
from tests.support.agent import COLLECTIONS, AgentProcess, free_port
from tests.support.netns import VethPair, icmp_echo, tcp_transfer, udp_lockstep, udp_to_closed_port
from tests.support.process import LOOPBACK
from tests.support.prom import PrometheusServer
from tests.support.uffd import tcp_behind_held_lock
from tests.support.wait import poll_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "deploy" / "grafana" / "dashboard.json").read_text())
NODE = "worker-1.cluster.test"
STAGES = {"backlog", "stack", "socket", "qdisc"}
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval for a 15 s scrape interval
BUCKET = "netlat_packet_latency_seconds_bucket"
QUANTILE_STAGE = "socket"  # a p99 that lands past the first bucket: interpolation is exercised


# ---- a Prometheus configured from the PodMonitor --------------------------------------------


def relabel_configs(podmonitor: dict) -> list[dict]:
    """The PodMonitor's relabelings as prometheus-operator writes them (camelCase → snake_case)."""
    (endpoint,) = podmonitor["spec"]["podMetricsEndpoints"]
    return [{re.sub(r"([A-Z])", r"_\1", k).lower(): v for k, v in r.items()} for r in endpoint["relabelings"]]


class PodMonitorPrometheus(PrometheusServer):
    """Debian's prometheus scraping one target as the PodMonitor's job would, every second."""

    def __init__(self, target: str, podmonitor: dict, node: str, workdir: Path) -> None:
        (endpoint,) = podmonitor["spec"]["podMetricsEndpoints"]
        meta = podmonitor["metadata"]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/0",
                    "metrics_path": endpoint["path"],
                    # What Kubernetes service discovery sets on a pod's target.
                    "static_configs": [
                        {"targets": [target], "labels": {"__meta_kubernetes_pod_node_name": node}}
                    ],
                    "relabel_configs": relabel_configs(podmonitor),
                }
            ],
        }
        super().__init__([], workdir, config=config)

    def query_at(self, expr: str, at: float | None = None) -> dict:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            with LOOPBACK.open(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{expr}: HTTP {e.code} {e.read().decode()[:300]}") from e
        assert body["status"] == "success", body
        return body["data"]


@pytest.fixture
def prometheus(tmp_path):
    servers: list[PrometheusServer] = []

    def start(target: str) -> PodMonitorPrometheus:
        workdir = tmp_path / "prom"
        workdir.mkdir()
        servers.append(PodMonitorPrometheus(target, one("PodMonitor"), NODE, workdir))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


# ---- the dashboard's queries and variables --------------------------------------------------


def panels(items: list[dict] = DASHBOARD["panels"]) -> list[dict]:
    """Every panel, including those inside rows."""
    out = []
    for p in items:
        if p["type"] == "row":
            out += panels(p.get("panels", []))
        else:
            out.append(p)
    return out


def regex_value(values: list[str]) -> str:
    """A variable's value in a PromQL regex matcher, escaped as Grafana's Prometheus source does."""
    escaped = [re.escape(v).replace("\\", "\\\\") for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def resolve_variables(prom: PodMonitorPrometheus) -> dict[str, list[str]]:
    """Each query variable's values, from its own label_values() query, in dashboard order."""
    values: dict[str, list[str]] = {}
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] == "datasource":
            assert var["query"] == "prometheus"
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        assert var["definition"] == var["query"]["query"]
        selector = substitute(m.group(1), {k: regex_value(v) for k, v in values.items()})
        result = prom.query_at(f"group by ({m.group(2)}) ({selector})")["result"]
        values[var["name"]] = sorted(r["metric"][m.group(2)] for r in result if m.group(2) in r["metric"])
        assert values[var["name"]], f"variable {var['name']}: {var['query']['query']} has no values"
    return values


def test_dashboard_model():
    """What Grafana (10+) and the kube-prometheus-stack sidecar rely on, checked statically."""
    assert DASHBOARD["uid"] == "otel-netlat" and DASHBOARD["schemaVersion"] >= 36
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert list(variables) == ["datasource", "node", "stage"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("node", "stage"):
        var = variables[name]
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    builtins = {"__rate_interval", "__interval", "__range"}
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= set(variables) | builtins, (panel["title"], used)
            assert target["datasource"] == panel["datasource"]
    assert {p["type"] for p in panels()} >= {"heatmap", "timeseries", "stat", "table"}


# ---- traffic and Prometheus' view of it ------------------------------------------------------


def traffic(pair: VethPair) -> None:
    """Every kind of packet the panels show: UDP v4/v6, TCP (and TCP behind a held socket
    lock, so tcp_backlog has samples in every rate() window), ICMP, and drops (NO_SOCKET)."""
    tcp_behind_held_lock(pair)
    udp_lockstep(pair, 200)
    udp_lockstep(pair, 50, socket.AF_INET6)
    tcp_transfer(pair, 64 * 1024)
    icmp_echo(pair, 5)
    udp_to_closed_port(pair, 10)


def agent_buckets(agent: AgentProcess, stage: str) -> dict[frozenset, float]:
    """This stage's bucket series on the agent's /metrics, keyed by their labels."""
    return {
        labels: v
        for (name, labels), v in agent.metrics().items()
        if name == BUCKET and ("netlat_stage", stage) in labels
    }


def prom_key(metric: dict) -> frozenset:
    """A Prometheus series' labels without what the scrape added (job, instance, node)."""
    added = ("__name__", "job", "instance", NODE_LABEL)
    return frozenset((k, v) for k, v in metric.items() if k not in added)


def scraped(agent: AgentProcess, prom: PodMonitorPrometheus) -> None:
    """Until Prometheus holds a scrape of a snapshot that has the traffic just sent."""
    agent.wait_for_collections(2)
    want = agent.collections()
    prom.wait_for(COLLECTIONS, lambda r: any(float(x["value"][1]) >= want for x in r))


def settle(agent: AgentProcess, prom: PodMonitorPrometheus, stage: str, timeout: float = 60) -> dict:
    """Wait until the stage's buckets stop changing on the agent and Prometheus holds that state.

    Stopped means: the same across one whole collection (two more reads of the maps).
    """
    last = [agent_buckets(agent, stage)]

    def held_and_scraped() -> tuple[dict] | None:
        agent.wait_for_collections(2)
        now = agent_buckets(agent, stage)
        if now != last[0]:
            last[0] = now
            return None
        seen = prom.query_at(f'{BUCKET}{{netlat_stage="{stage}"}}')["result"]
        return (now,) if {prom_key(r["metric"]): float(r["value"][1]) for r in seen} == now else None

    (settled,) = poll_until(held_and_scraped, timeout, f"the {stage} buckets to settle", every=0)
    return settled


def by_le(series: dict[frozenset, float]) -> dict[float, float]:
    out: dict[float, float] = {}
    for labels, v in series.items():
        le = float(dict(labels)["le"])
        out[le] = out.get(le, 0.0) + v
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile on cumulative buckets (linear inside the bucket; the
    first bucket starts at 0; a rank in +Inf gives the last finite bound)."""
    bounds = sorted(buckets)
    assert bounds[-1] == math.inf and len(bounds) >= 2
    counts = [buckets[b] for b in bounds]
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2]
    start, count = 0.0, counts[b]
    if b > 0:
        start, count, rank = bounds[b - 1], counts[b] - counts[b - 1], rank - counts[b - 1]
    return start + (bounds[b] - start) * (rank / count)


def test_histogram_quantile_matches_prometheus_rules():
    buckets = {1e-6: 0, 2e-6: 10, 4e-6: 90, 8e-6: 100, math.inf: 100}
    assert histogram_quantile(0.5, buckets) == pytest.approx(2e-6 + 2e-6 * (40 / 80))
    assert histogram_quantile(0.05, buckets) == pytest.approx(1e-6 + 1e-6 * 0.5)
    assert histogram_quantile(0.99, {1e-6: 0, 2e-6: 10, math.inf: 20}) == 2e-6
    assert histogram_quantile(0.5, {1e-6: 4, math.inf: 4}) == pytest.approx(0.5e-6)
    assert math.isnan(histogram_quantile(0.5, {1e-6: 0, math.inf: 0}))


# ---- the test -------------------------------------------------------------------------------


def run_panel_queries(prom, values: dict[str, list[str]], at: float) -> dict[tuple[str, str, str], list]:
    """Every target of every panel; a panel repeated per stage runs once per stage."""
    fixed = {
        "node": regex_value(values["node"]),
        "__rate_interval": RATE_INTERVAL,
        "__interval": "15s",
        "__range": "5m",
    }
    results: dict[tuple[str, str, str], list] = {}
    for panel in panels():
        stages = [[s] for s in values["stage"]] if panel.get("repeat") == "stage" else [values["stage"]]
        assert panel.get("repeat") in (None, "stage"), panel["title"]
        for stage in stages:
            for target in panel["targets"]:
                expr = substitute(target["expr"], {**fixed, "stage": regex_value(stage)})
                key = (panel["title"].replace("$stage", "+".join(stage)), target["refId"], expr)
                results[key] = prom.query_at(expr, at)["result"]
    return results


def test_every_panel_query_returns_data(start_agent, prometheus, veth_pair, default_stages):
    closed = free_port()  # an OTLP endpoint nobody listens on: the export-failure counter moves
    # The default stages and softirq (opt-in), whose panels need it.
    stages = ",".join([s.name for s in default_stages] + ["drops", "softirq"])
    agent = start_agent(
        "--stages",
        stages,
        "--netns",
        veth_pair.a,
        "--netns",
        veth_pair.b,
        "--interval",
        "1",
        "--otlp-endpoint",
        f"http://127.0.0.1:{closed}",
        "--otlp-interval",
        "1",
        env={"NODE_NAME": NODE},
    )
    prom = prometheus(f"127.0.0.1:{agent.port}")
    for _ in range(3):  # three scrapes with traffic between them: rate() has data
        traffic(veth_pair)
        scraped(agent, prom)
    before = settle(agent, prom, QUANTILE_STAGE)
    traffic(veth_pair)
    udp_lockstep(veth_pair, 300)
    after = settle(agent, prom, QUANTILE_STAGE)
    assert set(after) == set(before), "new bucket series appeared between the two states"

    values = resolve_variables(prom)
    assert values["node"] == [NODE]
    assert set(values["stage"]) >= STAGES, values["stage"]

    # The scrapes that hold exactly the two states: t0 (before) and t1 (after).
    window = prom.query_at(f'{BUCKET}{{netlat_stage="{QUANTILE_STAGE}"}}[5m]')["result"]
    samples: dict[float, dict[frozenset, float]] = {}
    for series in window:
        for t, v in series["values"]:
            samples.setdefault(float(t), {})[prom_key(series["metric"])] = float(v)
    t1 = max(samples)
    assert samples[t1] == after
    t0 = max(t for t, state in samples.items() if state == before)

    results = run_panel_queries(prom, values, t1)
    empty = [
        f"{title} [{ref}]: {expr}"
        for (title, ref, expr), r in results.items()
        if not any(math.isfinite(float(s["value"][1])) for s in r)
    ]
    assert not empty, "panel queries without data:\n" + "\n".join(empty)

    identity = [r for (title, _, _), r in results.items() if title.startswith("Accounting identity")]
    assert identity and all(float(s["value"][1]) == 0 for r in identity for s in r), identity

    # One quantile panel against the agent's own /metrics. Its p99 target is
    # histogram_quantile(0.99, sum by (le) (rate(bucket[W]))). Evaluated at t1 with W reaching
    # back to t0 (+1 ms, so t0 is inside the range however the range's start is treated),
    # rate() is (after - before) / W for every bucket, up to a 1 ms extrapolation on some
    # (< 1e-3 of the window); histogram_quantile does not change when every bucket is scaled
    # by the same factor, so the panel must equal the quantile of the agents' bucket deltas.
    (panel,) = [p for p in panels() if p["title"] == "Latency quantiles: $stage"]
    (p99,) = [t for t in panel["targets"] if t["legendFormat"] == "p99"]
    w_ms = round((t1 - t0) * 1000) + 1
    expr = substitute(
        p99["expr"], {"stage": QUANTILE_STAGE, "node": regex_value([NODE]), "__rate_interval": f"{w_ms}ms"}
    )
    (got,) = prom.query_at(expr, t1)["result"]
    delta = {le: v - by_le(before)[le] for le, v in by_le(after).items()}
    assert delta[math.inf] >= 300
    want = histogram_quantile(0.99, delta)
    assert float(got["value"][1]) == pytest.approx(want, rel=1e-3), (delta, want)
