"""Pod attribution: PodIndex driven through the real kubernetes client, and attribute().

The API server is :mod:`tests.support.kube_api` on loopback; every pod object it serves is
validated against the Kubernetes 1.37 schema first, so the hand-written pods are ones a
real API server could return.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import kubernetes
import kubernetes_validate
import pytest
from kubernetes import client as k8s

from otel_netlat.collect.snapshot import CounterPoint, HistogramSeries, Retired, Snapshot, as_attributes
from otel_netlat.k8s.attribution import Attributor, attribute, host_ip
from otel_netlat.k8s.pods import PodIndex, PodIndexError
from tests.support.kube_api import FakeKubeAPI, make_pod, wait_until

NODE = "node-a"
VALIDATED: list[str] = []


def validate(pod: dict) -> None:
    try:
        kubernetes_validate.validate(pod, "1.37.0", strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"hand-written pod is not a valid v1 Pod: {str(e).splitlines()[0]}") from None
    VALIDATED.append(pod["metadata"]["name"])


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(validate) as server:
        yield server


@pytest.fixture
def make_index(api: FakeKubeAPI) -> Iterator:
    made: list[PodIndex] = []

    def make(**kwargs) -> PodIndex:
        cfg = k8s.Configuration(host=api.url)
        kwargs = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "read_timeout_s": 10.0} | kwargs
        index = PodIndex(k8s.ApiClient(cfg), NODE, **kwargs)
        made.append(index)
        index.start()
        assert index.wait_ready(5), "initial list did not complete"
        wait_until(lambda: api.open_watches() >= 1, what="the watch to open")
        return index

    yield make
    for index in made:
        index.stop()
        assert index._thread is not None and not index._thread.is_alive(), "PodIndex thread did not stop"


def test_client_version_is_the_pinned_one() -> None:
    assert kubernetes.__version__ == "37.0.2"


def test_initial_list_uses_node_selector_and_skips_host_network(api, make_index) -> None:
    api.seed(
        make_pod("web", "10.1.0.5", namespace="shop"),
        make_pod("dual", "10.1.0.6", extra_ips=("fd00::6",)),
        make_pod("proxy", "192.168.0.10", host_network=True),
        make_pod("done", "10.1.0.7", phase="Succeeded"),
        make_pod("elsewhere", "10.2.0.5", node="node-b"),
    )
    index = make_index()
    assert index.lookup("10.1.0.5") == ("shop", "web")
    assert index.lookup("10.1.0.6") == ("default", "dual")
    assert index.lookup("fd00::6") == ("default", "dual")
    assert index.lookup("192.168.0.10") is None  # hostNetwork: the node's own IP
    assert index.lookup("10.1.0.7") is None  # finished pods hold no IP
    assert index.lookup("10.2.0.5") is None  # another node's pod is not even served
    assert index.size() == 3
    for q in api.requests:
        assert q["fieldSelector"] == [f"spec.nodeName={NODE}"]
    (watch,) = api.watch_requests()
    assert watch["resourceVersion"] == [str(api.rv)]
    assert watch["allowWatchBookmarks"] == ["true"]
    assert index.errors == 0 and index.relists == 0
    assert VALIDATED


def test_paged_initial_list(api, make_index) -> None:
    api.seed(*(make_pod(f"p{i}", f"10.1.1.{i}") for i in range(5)))
    index = make_index(list_page_size=2)
    assert index.size() == 5
    assert [q.get("continue") for q in api.list_requests()] == [None, ["2"], ["4"]]


def test_pod_churn(api, make_index) -> None:
    api.seed(make_pod("a", "10.1.0.1"))
    index = make_index()
    api.add(make_pod("b", None, phase="Pending"))  # scheduled, no IP yet
    api.modify(make_pod("b", "10.1.0.2"))  # IP assigned
    wait_until(lambda: index.lookup("10.1.0.2") == ("default", "b"), what="b's IP")
    api.modify(make_pod("b", "10.1.0.2", phase="Failed"))
    wait_until(lambda: index.lookup("10.1.0.2") is None, what="failed pod removed")
    api.delete(make_pod("a", "10.1.0.1"))
    wait_until(lambda: index.lookup("10.1.0.1") is None, what="deleted pod removed")
    api.add(make_pod("c", "10.1.0.3", namespace="kube-system"))
    wait_until(lambda: index.lookup("10.1.0.3") == ("kube-system", "c"), what="c added")
    api.add(make_pod("hn", "192.168.0.10", host_network=True))
    api.add(make_pod("d", "10.1.0.4"))
    wait_until(lambda: index.lookup("10.1.0.4") is not None, what="d added")
    assert index.lookup("192.168.0.10") is None
    assert index.size() == 2
    assert index.errors == 0


def test_ip_reused_new_pod_added_before_old_deleted(api, make_index) -> None:
    old = make_pod("old", "10.1.0.9", uid="u-old", created="2025-01-01T00:00:00Z")
    api.seed(old)
    index = make_index()
    # The old pod terminates; the CNI hands its IP to a new pod before DELETED arrives,
    # and a late status update of the old pod still shows the IP.
    api.modify(make_pod("old", "10.1.0.9", uid="u-old", deleting=True))
    api.add(make_pod("new", "10.1.0.9", uid="u-new", created="2025-01-01T00:05:00Z"))
    wait_until(lambda: index.lookup("10.1.0.9") == ("default", "new"), what="new owner")
    api.modify(make_pod("old", "10.1.0.9", uid="u-old", deleting=True))
    api.delete(make_pod("old", "10.1.0.9", uid="u-old", deleting=True))
    api.add(make_pod("marker", "10.1.0.250"))
    wait_until(lambda: index.lookup("10.1.0.250") is not None, what="events processed")
    assert index.lookup("10.1.0.9") == ("default", "new")


def test_ip_reused_old_deleted_first(api, make_index) -> None:
    api.seed(make_pod("old", "10.1.0.9", uid="u-old"))
    index = make_index()
    api.delete(make_pod("old", "10.1.0.9", uid="u-old"))
    wait_until(lambda: index.lookup("10.1.0.9") is None, what="old removed")
    api.add(make_pod("new", "10.1.0.9", uid="u-new", created="2025-01-01T00:05:00Z"))
    wait_until(lambda: index.lookup("10.1.0.9") == ("default", "new"), what="new owner")


def test_ip_reuse_seen_in_one_list(api, make_index) -> None:
    """A re-list can hold the terminating old pod and the new one with the same IP."""
    api.seed(
        make_pod("new", "10.1.0.9", uid="u-new", created="2025-01-01T00:05:00Z"),
        make_pod("old", "10.1.0.9", uid="u-old", deleting=True),
    )
    index = make_index()
    assert index.lookup("10.1.0.9") == ("default", "new")


def test_dropped_watch_resumes_from_resource_version(api, make_index) -> None:
    api.seed(make_pod("a", "10.1.0.1"))
    index = make_index()
    api.add(make_pod("b", "10.1.0.2"))
    wait_until(lambda: index.lookup("10.1.0.2") is not None, what="b")
    seen_rv = str(api.rv)
    # Events the open connection never delivers: only a resume from seen_rv finds them.
    api.hold()
    api.delete(make_pod("a", "10.1.0.1"))
    api.add(make_pod("c", "10.1.0.3"))
    api.hold(False)
    api.drop_watches("abrupt")
    wait_until(lambda: index.lookup("10.1.0.3") is not None, what="c after reconnect")
    assert index.lookup("10.1.0.1") is None
    assert api.watch_requests()[1]["resourceVersion"] == [seen_rv]
    assert len(api.list_requests()) == 1, "a resumable watch must not re-list"
    assert index.relists == 0
    api.drop_watches("clean")  # a server-side timeout: also just a resume
    wait_until(lambda: len(api.watch_requests()) == 3 and api.open_watches() == 1, what="resume")
    api.add(make_pod("d", "10.1.0.4"))
    wait_until(lambda: index.lookup("10.1.0.4") is not None, what="d")
    assert len(api.list_requests()) == 1


def test_gone_event_relists(api, make_index) -> None:
    api.seed(make_pod("a", "10.1.0.1"), make_pod("b", "10.1.0.2"))
    index = make_index()
    api.hold()
    api.delete(make_pod("a", "10.1.0.1"))
    api.add(make_pod("c", "10.1.0.3"))
    api.compact()  # the held events fall out of the watch window
    api.hold(False)
    api.drop_watches("clean")
    wait_until(lambda: index.relists == 1 and index.lookup("10.1.0.3") is not None, what="re-list")
    assert index.lookup("10.1.0.1") is None
    assert index.lookup("10.1.0.2") == ("default", "b")
    assert len(api.list_requests()) == 2
    wait_until(lambda: api.open_watches() == 1, what="watch after re-list")
    assert api.watch_requests()[-1]["resourceVersion"] == [str(api.rv)]
    api.add(make_pod("d", "10.1.0.4"))
    wait_until(lambda: index.lookup("10.1.0.4") is not None, what="d after re-list")


def test_http_410_on_watch_relists(api, make_index) -> None:
    api.seed(make_pod("a", "10.1.0.1"))
    index = make_index()
    api.fail_next(410, watch=True)
    api.drop_watches("abrupt")
    wait_until(lambda: index.relists == 1 and api.open_watches() == 1, what="re-list after HTTP 410")
    assert len(api.list_requests()) == 2
    assert index.lookup("10.1.0.1") == ("default", "a")


def test_failures_back_off_and_count_errors(api, make_index) -> None:
    api.seed(make_pod("a", "10.1.0.1"))
    api.fail_next(500, watch=False)
    index = make_index()  # the first list fails, the retry succeeds
    assert index.errors == 1
    assert index.lookup("10.1.0.1") == ("default", "a")
    api.fail_next(500, watch=True)
    api.fail_next(500, watch=True)
    api.drop_watches("abrupt")
    wait_until(lambda: index.errors >= 3 and api.open_watches() == 1, what="recovery")
    api.add(make_pod("b", "10.1.0.2"))
    wait_until(lambda: index.lookup("10.1.0.2") is not None, what="b after recovery")


def test_from_cluster_outside_a_cluster(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(PodIndexError, match="Kubernetes cluster"):
        PodIndex.from_cluster(NODE)


def test_node_name_required() -> None:
    with pytest.raises(PodIndexError, match="NODE_NAME"):
        PodIndex(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")), "")


# ---- attribution -------------------------------------------------------------------------


class Pods:
    def __init__(self, mapping: dict[str, tuple[str, str]]) -> None:
        self.mapping = mapping

    def lookup(self, ip: str) -> tuple[str, str] | None:
        return self.mapping.get(ip)


PODS = Pods({"10.1.0.5": ("shop", "web"), "10.1.0.6": ("shop", "web"), "fd00::6": ("db", "pg")})
BOUNDS = (0.001, 0.01)


def a(**kw: str) -> tuple:
    return as_attributes({k.replace("_", "."): v for k, v in kw.items()})


def flow(direction: str, src: str, dst: str, stage: str = "s") -> tuple:
    return as_attributes(
        {
            "netlat.stage": stage,
            "network.io.direction": direction,
            "source.address": src,
            "destination.address": dst,
        }
    )


def snap(latency=(), packets=(), drops=()) -> Snapshot:
    return Snapshot(
        taken_at_ns=1,
        bounds_s=BOUNDS,
        latency=tuple(latency),
        packets=tuple(packets),
        drops=tuple(drops),
        entries=(CounterPoint(a(x="y"), 7),),
    )


def test_host_ip_only_for_full_length_prefixes() -> None:
    assert host_ip("10.1.2.3/32") == "10.1.2.3"
    assert host_ip("10.1.2.0/24") is None
    assert host_ip("fd00:0:0::6/128") == "fd00::6"
    assert host_ip("fd00::/64") is None
    assert host_ip("nonsense") is None
    assert host_ip(None) is None


def test_attribute_adds_pod_of_local_address() -> None:
    rx = HistogramSeries(flow("receive", "8.8.8.8/32", "10.1.0.5/32"), (1, 2, 3), 500, 6)
    tx = HistogramSeries(flow("transmit", "fd00::6/128", "10.1.0.5/32", stage="t"), (0, 1, 0), 70, 1)
    agg = HistogramSeries(flow("receive", "8.8.8.8/32", "10.1.0.0/24", stage="u"), (1, 0, 0), 9, 1)
    out = attribute(snap(latency=[rx, tx, agg], packets=[CounterPoint(rx.attributes, 6)]), PODS)
    got = {dict(s.attributes)["netlat.stage"]: dict(s.attributes) for s in out.latency}
    assert got["s"]["k8s.namespace.name"] == "shop" and got["s"]["k8s.pod.name"] == "web"
    assert got["s"]["destination.address"] == "10.1.0.5/32"  # kept by default
    # transmit: the local end is the source, even though the destination is a pod too
    assert (got["t"]["k8s.namespace.name"], got["t"]["k8s.pod.name"]) == ("db", "pg")
    assert "k8s.pod.name" not in got["u"]  # a /24 names no single pod
    assert dict(out.packets[0].attributes)["k8s.pod.name"] == "web"
    assert out.entries == (CounterPoint(a(x="y"), 7),)


def test_attribute_drops_use_destination_then_source() -> None:
    d1 = CounterPoint(
        as_attributes(
            {"netlat.drop.reason": "R", "source.address": "fd00::6/128", "destination.address": "10.1.0.5/32"}
        ),
        3,
    )
    d2 = CounterPoint(
        as_attributes(
            {"netlat.drop.reason": "R", "source.address": "fd00::6/128", "destination.address": "1.1.1.1/32"}
        ),
        4,
    )
    out = attribute(snap(drops=[d1, d2]), PODS)
    assert [dict(p.attributes)["k8s.pod.name"] for p in out.drops] == ["web", "pg"]


def test_merge_without_addresses_sums_exactly() -> None:
    # Two addresses of the same pod (web: .5 and .6) plus two peers: all merge into one
    # series per (stage, pod); unknown local addresses merge into one unattributed series.
    s1 = HistogramSeries(flow("receive", "8.8.8.8/32", "10.1.0.5/32"), (1, 2, 3), 1_000_000_001, 6)
    s2 = HistogramSeries(flow("receive", "9.9.9.9/32", "10.1.0.6/32"), (4, 0, 1), 2_000_000_003, 5)
    s3 = HistogramSeries(flow("receive", "8.8.8.8/32", "10.9.9.9/32"), (0, 1, 0), 7, 1)
    s4 = HistogramSeries(flow("receive", "9.9.9.9/32", "10.9.9.8/32"), (2, 0, 0), 11, 2)
    overflow = HistogramSeries(a(otel_metric_overflow="true"), (5, 5, 5), 99, 15)
    packets = [CounterPoint(s.attributes, n) for s, n in ((s1, 10), (s2, 20), (s3, 30), (s4, 40))]
    packets.append(CounterPoint(overflow.attributes, 50))
    drops = [
        CounterPoint(
            as_attributes(
                {
                    "netlat.drop.reason": "R",
                    "destination.address": "10.1.0.5/32",
                    "source.address": "1.1.1.1/32",
                }
            ),
            2,
        ),
        CounterPoint(
            as_attributes(
                {
                    "netlat.drop.reason": "R",
                    "destination.address": "10.1.0.6/32",
                    "source.address": "2.2.2.2/32",
                }
            ),
            5,
        ),
    ]
    out = attribute(
        snap(latency=[s1, s2, s3, s4, overflow], packets=packets, drops=drops), PODS, keep_addresses=False
    )
    web = as_attributes(
        {
            "netlat.stage": "s",
            "network.io.direction": "receive",
            "k8s.namespace.name": "shop",
            "k8s.pod.name": "web",
        }
    )
    other = as_attributes({"netlat.stage": "s", "network.io.direction": "receive"})
    assert out.latency == (
        HistogramSeries(web, (5, 2, 4), 3_000_000_004, 11),
        HistogramSeries(other, (2, 1, 0), 18, 3),
        overflow,
    )
    assert out.packets == (
        CounterPoint(web, 30),
        CounterPoint(other, 70),
        CounterPoint(overflow.attributes, 50),
    )
    assert out.drops == (
        CounterPoint(
            as_attributes({"netlat.drop.reason": "R", "k8s.namespace.name": "shop", "k8s.pod.name": "web"}), 7
        ),
    )
    # Totals are conserved exactly.
    assert sum(s.count for s in out.latency) == sum(s.count for s in (s1, s2, s3, s4, overflow))
    assert sum(s.sum_ns for s in out.latency) == sum(s.sum_ns for s in (s1, s2, s3, s4, overflow))


def test_attribute_without_address_series_is_identity() -> None:
    plain = HistogramSeries(a(netlat_stage="s", network_io_direction="receive"), (1, 1, 1), 5, 3)
    s = snap(latency=[plain], packets=[CounterPoint(plain.attributes, 3)])
    assert attribute(s, PODS) == s
    assert attribute(s, PODS, keep_addresses=False) == s


class MutableIndex:
    """A pod index the test changes between snapshots."""

    def __init__(self, pods: dict[str, tuple[str, str]]) -> None:
        self.pods = pods

    def lookup(self, ip: str) -> tuple[str, str] | None:
        return self.pods.get(ip)


def test_attributor_follows_the_index_from_snapshot_to_snapshot() -> None:
    """The run loop's attributor reuses its work only while the pods of an address stay the same."""
    rx = HistogramSeries(flow("receive", "8.8.8.8/32", "10.1.0.5/32"), (1, 2, 3), 500, 6)
    s = snap(latency=[rx], packets=[CounterPoint(rx.attributes, 6)])
    index = MutableIndex({"10.1.0.5": ("shop", "web")})
    attributor = Attributor(index, keep_addresses=False)
    assert [dict(p.attributes).get("k8s.pod.name") for p in attributor(s).packets] == ["web"]
    assert attributor(s) == attribute(s, index, keep_addresses=False)
    index.pods["10.1.0.5"] = ("shop", "web-2")  # the address moved to another pod
    assert [dict(p.attributes).get("k8s.pod.name") for p in attributor(s).packets] == ["web-2"]
    del index.pods["10.1.0.5"]
    assert [dict(p.attributes).get("k8s.pod.name") for p in attributor(s).packets] == [None]
    assert len(attributor._done) == 1  # what the last snapshot used, nothing older


def test_retired_counts_are_attributed_like_live_ones() -> None:
    rx = HistogramSeries(flow("receive", "8.8.8.8/32", "10.1.0.5/32"), (1, 0, 0), 5, 1)
    gone = replace(rx, attributes=flow("receive", "9.9.9.9/32", "10.1.0.5/32"))
    s = replace(
        snap(latency=[rx], packets=[CounterPoint(rx.attributes, 1)]),
        retired=Retired(latency=(gone,), packets=(CounterPoint(gone.attributes, 4),)),
    )
    out = attribute(s, PODS, keep_addresses=False)
    assert [p.attributes for p in out.retired.packets] == [out.packets[0].attributes]
    assert out.retired.packets[0].value == 4
    assert out.retired.latency[0].attributes == out.latency[0].attributes


def test_slow_records_name_the_pod_of_their_local_end() -> None:
    """A receive stage's record: the destination's pod; a transmit stage's: the source's."""
    from otel_netlat.collect.snapshot import SlowRecord  # noqa: PLC0415

    def record(stage: str, src: str, dst: str) -> SlowRecord:
        return SlowRecord(stage, 5, 1, 0, "ipv4", "udp", src, 1, dst, 2, 3, 4)

    attributor = Attributor(PODS, keep_addresses=True)
    rx = attributor.record_pod(record("socket", "8.8.8.8", "10.1.0.5"))
    tx = attributor.record_pod(record("qdisc", "fd00::6", "10.1.0.5"))
    none = attributor.record_pod(record("socket", "10.1.0.5", "8.8.8.8"))
    assert dict(rx.pod) == {"k8s.namespace.name": "shop", "k8s.pod.name": "web"}
    assert dict(tx.pod) == {"k8s.namespace.name": "db", "k8s.pod.name": "pg"}
    assert none.pod == ()  # received by a non-pod address: no pod, even though the source is one
    out = attributor(replace(snap(), slow=(record("socket", "8.8.8.8", "10.1.0.6"),)))
    assert dict(out.slow[0].pod)["k8s.pod.name"] == "web"
