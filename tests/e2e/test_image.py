"""The agent and Collector images, built for real and run by a real OCI runtime as the cluster would.

``make image`` builds both with podman (no Docker, no registry: a debootstrapped Debian 12 base,
this machine's apt mirror). Each runs under runc with every setting of its rendered pod template
(tests/e2e/test_deploy.py renders deploy/kubernetes; tests/support/container.py translates the
template and refuses fields it cannot reproduce): the agent as root with only BPF and PERFMON,
no_new_privs, a read-only root with its emptyDir and the BTF hostPath, seccomp and AppArmor
unconfined, no host network or PID; the Collector as 10001 with nothing.

Each pod gets a network namespace the test made, as CNI gives one per pod; the two pods are
joined by a veth ("the pod network"), and the agent reaches the Collector by the Service's
name. Test traffic flows between two other namespaces: the agent sees it, as a DaemonSet pod
sees every pod of its node, and counts it exactly under the pair's own /24 address label.
"""

from __future__ import annotations

import copy
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from otel_netlat.stages.table import DIRECT_STAGES
from tests.e2e.test_deploy import REPO, agent_container, one, rendered
from tests.e2e.test_least_privilege import mask
from tests.support.agent import COLLECTIONS, parse_metrics, total
from tests.support.collector import prometheus_samples
from tests.support.container import PodContainer, pod_run_args, podman, sandbox_limits
from tests.support.netns import VethPair, make_veth_pair, remove_veth_pair, udp_lockstep
from tests.support.wait import poll_until

NODE = "nl-img-node"
COLLECTOR_SERVICE = "otel-netlat-collector"
# Test knobs on top of the manifest's (empty) arguments: collect every second, push OTLP every
# second, and label series with /24 networks: the test pair's own /24 counts its packets apart
# from everything else this machine does (/32 would give each address of that traffic its own
# series, and a busy machine overflows the series cap: seen here, 2000 series in seconds).
AGENT_ARGS = ["--interval", "1", "--otlp-interval", "1", "--address-labels", "--ipv4-prefix", "24"]
DATAGRAMS = 100
MAX_IMAGE_MIB = 600  # measured 545 MiB: BCC's LLVM is ~190 of it, the Python dependencies ~190


def make(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-s", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def images(require_root) -> tuple[str, str]:
    """(agent, Collector) image references, built if needed (seconds when cached)."""
    build = make("image")
    assert build.returncode == 0, f"make image failed:\n{(build.stdout + build.stderr)[-4000:]}"
    agent, collector = make("-f", "deploy/deploy.mk", "image-refs").stdout.split()
    return agent, collector


def pod_template(kind: str, name: str) -> dict:
    return copy.deepcopy(one(kind, name)["spec"]["template"]["spec"])


def config_maps() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in rendered() if d["kind"] == "ConfigMap"}


def container_port(container: dict, probe: str) -> tuple[int, str]:
    """(port number, path) of a container's httpGet probe, its named port resolved."""
    get = container[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return ports.get(get["port"], get["port"]), get["path"]


def probe_budget(container: dict, probe: str) -> float:
    """How long the kubelet would wait on this probe before giving up, in seconds."""
    p = container[probe]
    return p.get("periodSeconds", 10) * p.get("failureThreshold", 3)


@dataclass
class Pods:
    agent: PodContainer
    collector: PodContainer
    agent_spec: dict
    traffic: VethPair


def start_collector(stack: ExitStack, image: str, netns: str, scratch: Path) -> PodContainer:
    pod = pod_template("Deployment", "otel-netlat-collector")
    (container,) = pod["containers"]
    # Our otelcol-netlat image in place of the contrib one (no registry here), as a kustomize
    # `images:` entry would swap it; everything else is the Deployment's.
    container["image"] = image
    run = pod_run_args(
        pod, container, netns=netns, scratch=scratch, node_name=NODE, config_maps=config_maps()
    )
    name = f"nl-img-collector-{secrets.token_hex(3)}"
    c = PodContainer(name, run, image, container["args"], netns, scratch / "collector.log")
    stack.callback(c.remove)
    port, path = container_port(container, "readinessProbe")
    c.wait_http(port, path, timeout=60)
    return c


def start_agent(
    image: str, netns: str, scratch: Path, *, collector_ip: str | None = None, drop: str | None = None
) -> tuple[PodContainer, dict]:
    """The DaemonSet's container in ``netns``; ``drop`` removes one added capability."""
    pod = pod_template("DaemonSet", "otel-netlat")
    (container,) = pod["containers"]
    assert container["image"] == image, "make image must tag the image the DaemonSet names"
    caps = container["securityContext"]["capabilities"]
    if drop:
        caps["add"] = [c for c in caps["add"] if c != drop]
    run = pod_run_args(
        pod, container, netns=netns, scratch=scratch, node_name=NODE, config_maps=config_maps()
    )
    if collector_ip:  # the Service name, as cluster DNS would answer it
        run += ["--add-host", f"{COLLECTOR_SERVICE}:{collector_ip}"]
    name = f"nl-img-agent-{secrets.token_hex(3)}"
    args = [*container.get("args", []), *AGENT_ARGS]
    return PodContainer(name, run, image, args, netns, scratch / "agent.log"), container


@pytest.fixture(scope="module")
def pods(images, tmp_path_factory) -> Iterator[Pods]:
    """Collector and agent pods, started as the manifests say, and a test pair for traffic."""
    agent_image, collector_image = images
    with ExitStack() as stack:
        network = make_veth_pair()  # a: the agent's pod, b: the Collector's
        stack.callback(remove_veth_pair, network)
        traffic = make_veth_pair()
        stack.callback(remove_veth_pair, traffic)
        scratch = tmp_path_factory.mktemp("pods")
        collector = start_collector(stack, collector_image, network.b, scratch / "collector")
        agent, spec = start_agent(agent_image, network.a, scratch / "agent", collector_ip=network.b4)
        stack.callback(agent.remove)
        port, path = container_port(spec, "startupProbe")
        agent.wait_http(port, path, timeout=probe_budget(spec, "startupProbe"))
        yield Pods(agent, collector, spec, traffic)


# ---- the image ----------------------------------------------------------------------------


def test_make_image_is_cached_and_small(images):
    agent_image, collector_image = images
    make("image")  # whatever changed since the fixture's build (a shared checkout moves)
    t0 = time.monotonic()
    again = make("image")
    seconds = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    assert (
        f"{agent_image} is up to date" in again.stdout and f"{collector_image} is up to date" in again.stdout
    )
    assert seconds < 30, f"a cached make image took {seconds:.1f}s"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", agent_image).stdout)
    assert size < MAX_IMAGE_MIB << 20, f"agent image is {size >> 20} MiB"
    # BCC compiles with its own libclang at run time: no compiler driver, no kernel headers.
    installed = "dpkg-query -W -f '${Package} ${Status}\\n' | awk '/ installed$/ {print $1}'"
    look = podman(
        *("run", "--rm", "--pull=never", *sandbox_limits(), "--network", "none", "--entrypoint", "/bin/sh"),
        agent_image,
        "-c",
        f"command -v gcc cc c++ clang clang-14 pip; test -e /etc/pip.conf && echo /etc/pip.conf; {installed}"
        " | grep -E '^(gcc|cpp|g\\+\\+|clang)-[0-9]+$|^linux-headers|^build-essential$'; true",
        check=False,
    )
    assert look.stdout.split() == [], f"in the image: {look.stdout.split()} {look.stderr}"


# ---- the agent pod --------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_agent_runs_with_exactly_the_daemonsets_security_context(pods):
    pid = pods.agent.init_pid
    status = proc_status(pid)
    sc = pods.agent_spec["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    want = mask(sc["capabilities"]["add"])
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == want, field
    assert int(status["CapAmb"], 16) == 0 and int(status["CapInh"], 16) == 0
    assert status["Uid"].split()[0] == "0"  # runAsUser 0
    assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == "0"  # seccompProfile Unconfined: no filter at all
    # Its own network and PID namespaces (no hostNetwork, no hostPID), the test's pod netns.
    host_ns = {ns: Path(f"/proc/self/ns/{ns}").stat().st_ino for ns in ("net", "pid")}
    own = {ns: Path(f"/proc/{pid}/ns/{ns}").stat().st_ino for ns in ("net", "pid")}
    assert own["net"] != host_ns["net"] and own["pid"] != host_ns["pid"]
    assert own["net"] == Path(f"/run/netns/{pods.agent.netns}").stat().st_ino
    assert status["NSpid"].split()[-1] == "1"  # the agent is the container's first process
    # readOnlyRootFilesystem; the emptyDir on /tmp is writable; the BTF hostPath is read-only.
    probe = pods.agent.exec(
        "sh", "-c", "touch /probe; touch /tmp/probe && echo tmp-ok; touch /sys/kernel/btf/x"
    )
    assert "Read-only file system" in probe.stderr and "tmp-ok" in probe.stdout, probe
    assert probe.stderr.count("Read-only file system") == 2, probe.stderr
    assert_apparmor_unconfined(pid)
    assert_memory_limit(pid, pods.agent_spec["resources"]["limits"]["memory"])


def assert_apparmor_unconfined(pid: int) -> None:
    """appArmorProfile Unconfined. Without AppArmor in the kernel there is nothing to confine:
    then what can be checked is that the runtime knows it is off and asked for nothing else."""
    if Path("/sys/module/apparmor").exists():
        label = Path(f"/proc/{pid}/attr/apparmor/current").read_text().strip()
        assert label == "unconfined", label
    else:
        info = podman("info", "--format", "{{.Host.Security.AppArmorEnabled}}").stdout.strip()
        assert info == "false", "AppArmor is not in this kernel (no /sys/module/apparmor), yet podman says on"


def assert_memory_limit(pid: int, limit: str) -> None:
    """resources.limits.memory is the container cgroup's limit (cgroup v1 or v2)."""
    want = int(limit.removesuffix("Mi")) << 20
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            got = Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text()
            assert int(got) == want, got
            return
    got = Path(f"/sys/fs/cgroup{path}/memory.max").read_text()  # cgroup v2: the 0:: line
    assert int(got) == want, got


def agent_metrics(pods: Pods) -> dict:
    return parse_metrics(pods.agent.get(2112, "/metrics").decode())


def wait_for_collections(pods: Pods, n: int = 2) -> None:
    """Until the agent has read the kernel maps ``n`` more times (tests/support/agent.py)."""
    want = total(agent_metrics(pods), COLLECTIONS) + n
    pods.agent.wait_until(lambda: total(agent_metrics(pods), COLLECTIONS) >= want, 30, f"{n} collections")


def pair_net(pair: VethPair) -> str:
    """The /24 both ends of the test pair live in (its address label)."""
    return pair.a4.rsplit(".", 1)[0] + ".0/24"


def test_agent_measures_veth_traffic_exactly(pods):
    """Datagrams between two other namespaces of the node, counted exactly from inside the pod."""
    pair = pods.traffic
    labels = {"source_address": pair_net(pair), "destination_address": pair_net(pair)}
    labels |= {"network_transport": "udp"}
    assert udp_lockstep(pair, DATAGRAMS) == DATAGRAMS
    wait_for_collections(pods)
    m = agent_metrics(pods)
    seen = {
        (dict(ls)["netlat_stage"], dict(ls).get("source_address"), dict(ls).get("destination_address")): v
        for (name, ls), v in m.items()
        if name == "netlat_packets_total"
        and pair_net(pair) in str(ls)
        or ("otel_metric_overflow", "true") in ls
    }
    for stage in (s.name for s in DIRECT_STAGES if s.direction == "receive"):  # a datagram's path in
        got = total(m, "netlat_packets_total", netlat_stage=stage, **labels)
        assert got == DATAGRAMS, f"{stage}: {got}; series of the pair or overflowed: {seen}"
    latency = total(m, "netlat_packet_latency_seconds_count", netlat_stage="qdisc", **labels)
    assert latency == DATAGRAMS
    assert total(m, "netlat_agent_probes") > 0
    node = [ls for (name, ls) in m if name == "target_info"]
    assert node and ("k8s_node_name", NODE) in node[0], node  # NODE_NAME from spec.nodeName


def test_otel_netlat_check_runs_inside_the_pod(pods):
    """As `kubectl exec POD -- otel-netlat check`: same namespaces, capabilities, user."""
    check = pods.agent.exec("otel-netlat", "check")
    out = check.stdout + check.stderr
    assert check.returncode == 0, out
    assert "Traceback" not in out
    lines = out.splitlines()
    for what in ("privileges", "btf", "stage backlog", "stage qdisc", "stage drops"):
        assert any(re.match(rf"ok\s+{what}\s", line) for line in lines), f"{what} not ok:\n{out}"
    assert lines[-1] == "run would start", out


def test_collector_receives_the_agents_otlp(pods):
    """The Collector pod, from its ConfigMap: OTLP in from the agent pod, Prometheus out on :8889."""
    pid = pods.collector.init_pid
    status = proc_status(pid)
    assert status["Uid"].split()[0] == "10001" and status["Gid"].split()[0] == "10001"
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"  # RuntimeDefault: a filter
    pair = pods.traffic
    want = {"source_address": pair_net(pair), "destination_address": pair_net(pair)}
    want |= {"netlat_stage": "backlog", "network_transport": "udp", "k8s_node_name": NODE}
    in_agent = {k: v for k, v in want.items() if k != "k8s_node_name"}
    agent_count = total(agent_metrics(pods), "netlat_packets_total", **in_agent)
    assert agent_count >= DATAGRAMS

    def exported() -> float:
        text = pods.collector.get(8889, "/metrics").decode()
        return sum(
            v
            for name, labels, v in prometheus_samples(text)
            if name == "netlat_packets_total" and want.items() <= labels.items()
        )

    seen = poll_until(
        lambda: exported() >= agent_count and exported(), 30, "the agent's counts on :8889", every=0.5
    )
    assert seen == agent_count


def test_sigterm_stops_the_agent_within_5_seconds(pods):
    """The kubelet's SIGTERM (through the runtime, to the container's first process): gone in
    under 5 s, exit 0, well inside terminationGracePeriodSeconds."""
    rc, seconds = pods.agent.terminate(timeout=30)
    assert rc == 0, pods.agent.output()
    assert seconds < 5, f"SIGTERM took {seconds:.1f}s"


# ---- missing capability -----------------------------------------------------------------------


def test_without_perfmon_one_clear_line(images, tmp_path, require_root):
    """The pod with PERFMON taken out of the manifest's list: one line naming it, exit non-zero."""
    agent_image, _ = images
    ns = f"nl-img-pod-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        agent, _ = start_agent(agent_image, ns, tmp_path, drop="PERFMON")
        try:
            rc = agent.wait_exit(30)
        finally:
            agent.remove()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    out = agent.output(None).strip()
    assert rc != 0, out
    assert "Traceback" not in out, out
    (line,) = out.splitlines()
    assert line.startswith("otel-netlat: error: missing capability CAP_PERFMON"), line


def test_manifest_image_is_what_make_image_tags(images):
    assert agent_container()["image"] == images[0]
