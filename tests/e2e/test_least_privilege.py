"""The agent with exactly the DaemonSet's capabilities, and with each one of them missing.

The capability list is read from the rendered DaemonSet (tests/e2e/test_deploy.py), so what is
proven here is what a cluster runs. ``setpriv`` (uid 0, like the pod) leaves the agent only
those capabilities in its effective, permitted and bounding sets, as the container runtime
does. The pod mounts no tracefs (raw tracepoints are attached by name, their arguments
described by BTF): the read-only-root runs hide tracefs and debugfs as the pod does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_deploy import agent_capabilities, make_deploy
from tests.support.agent import REPO, AgentProcess, total
from tests.support.netns import VethPair, udp_lockstep

# Each mount read-only in a private mount namespace, /tmp a fresh tmpfs: the pod's
# readOnlyRootFilesystem with its emptyDir. /proc and /dev stay as a runtime gives them.
# tracefs and debugfs are covered by empty read-only tmpfs: the pod has neither.
READ_ONLY_ROOT = r"""
findmnt -rn -o TARGET,FSTYPE | while read -r target fstype; do
  case "$target" in /proc|/proc/*|/dev|/dev/*) continue;; esac
  [ "$fstype" = nsfs ] && continue
  mount -o remount,bind,ro "$target" 2>/dev/null || echo "read-only root: cannot remount $target" >&2
done
# The emptyDir: on /tmp, unless the checkout itself lives under /tmp (a CI clone): a tmpfs
# there would hide it, so the scratch space goes to /var/tmp and TMPDIR says so.
scratch=/tmp
case "$RO_PROBE_DIR" in /tmp|/tmp/*) scratch=/var/tmp; export TMPDIR=/var/tmp;; esac
mount -t tmpfs -o size=64m tmpfs "$scratch"
for hidden in /sys/kernel/tracing /sys/kernel/debug; do
  mount -t tmpfs -o ro,size=4k tmpfs "$hidden" || { echo "cannot hide $hidden" >&2; exit 96; }
done
if touch /.netlat-rofs-probe "$RO_PROBE_DIR/.netlat-rofs-probe" 2>/dev/null; then
  echo "read-only root: the root filesystem is still writable" >&2; exit 97
fi
exec "$@"
"""


def cap_bits() -> dict[str, int]:
    """setpriv's capability names (lower case, no CAP_) → bit numbers, in kernel order."""
    listing = subprocess.run(["setpriv", "--list-caps"], capture_output=True, text=True, check=True)
    names = listing.stdout.split()
    return {name: bit for bit, name in enumerate(names)}


def own_caps(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def mask(caps: list[str]) -> int:
    bits = cap_bits()
    return sum(1 << bits[c.lower()] for c in caps)


def setpriv_wrapper(caps: list[str], read_only_root: bool) -> list[str]:
    """The command before the agent's: only ``caps`` (Kubernetes names: BPF, PERFMON), and
    the pod's read-only root when asked. Each step execs the next: ``pid`` is the agent's."""
    spec = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    cmd = ["setpriv", f"--inh-caps={spec}", f"--ambient-caps={spec}", f"--bounding-set={spec}", "--"]
    if read_only_root:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_ROOT, "sh", *cmd]
    return cmd


@pytest.fixture
def agents(require_root, tmp_path):
    """Factory of agents under setpriv (not waited for); every one is stopped afterwards."""
    started: list[AgentProcess] = []

    def start(caps: list[str], args: list[str], read_only_root: bool = False) -> AgentProcess:
        missing = mask(caps) & ~own_caps("CapBnd")
        if missing:
            pytest.fail(f"this test process lacks capabilities it must grant (mask {missing:#x})")
        agent = AgentProcess(
            args,
            {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "RO_PROBE_DIR": str(REPO)},
            tmp_path / f"agent-{len(started)}.log",
            wrapper=setpriv_wrapper(caps, read_only_root),
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(timeout=15)


def filtered(pair: VethPair) -> list[str]:
    return ["--netns", pair.a, "--netns", pair.b, "--interval", "1"]


def assert_measures_traffic(agent: AgentProcess, pair: VethPair, n: int = 100) -> None:
    """Datagrams sent a → b show up as starts and as latency samples of the backlog stage."""
    labels = {"netlat_stage": "backlog", "network_transport": "udp"}
    before = agent.metrics()
    assert udp_lockstep(pair, n) == n
    rise: dict[str, float] = {}

    def risen() -> bool:
        now = agent.metrics()
        for name in ("netlat_packets_total", "netlat_packet_latency_seconds_count"):
            rise[name] = total(now, name, **labels) - total(before, name, **labels)
        return all(v >= n for v in rise.values())

    agent.wait_until(risen, 15, f"counts to rise by {n}", every=0.5, detail=lambda: f"risen by {rise}")


def test_manifest_capabilities_are_enough(agents, veth_pair):
    caps = agent_capabilities()
    agent = agents(caps, filtered(veth_pair))
    agent.wait_ready()
    # The agent really runs with exactly these, as in the pod.
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert own_caps(field, str(agent.pid)) == mask(caps), field
    assert_measures_traffic(agent, veth_pair)
    assert agent.stop(timeout=15)[0] == 0, agent.output()


def test_manifest_capabilities_with_read_only_root(agents, veth_pair):
    """The pod's filesystem: a read-only root with an emptyDir on /tmp (BCC's scratch files fit
    there), and no tracefs or debugfs at all."""
    agent = agents(agent_capabilities(), filtered(veth_pair), read_only_root=True)
    agent.wait_ready()
    check = subprocess.run(
        ["nsenter", "-t", str(agent.pid), "-m", "ls", "-A", "/sys/kernel/tracing", "/sys/kernel/debug"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.split() == ["/sys/kernel/debug:", "/sys/kernel/tracing:"], check.stdout
    assert_measures_traffic(agent, veth_pair, n=50)
    assert agent.stop(timeout=15)[0] == 0, agent.output()
    assert "cannot remount" not in agent.output(None)


def test_each_missing_capability_is_one_clear_line(agents, veth_pair):
    caps = agent_capabilities()
    assert len(caps) >= 2
    for dropped in caps:
        agent = agents([c for c in caps if c != dropped], filtered(veth_pair))
        t0 = time.monotonic()
        try:
            rc = agent.proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"without CAP_{dropped} the agent is still running: {agent.output(2000)}")
        seconds = time.monotonic() - t0
        out = agent.output(None).strip()
        assert rc != 0, f"without CAP_{dropped}: exit 0\n{out}"
        assert "Traceback" not in out, out
        lines = out.splitlines()
        assert len(lines) == 1, f"without CAP_{dropped}, expected one line:\n{out}"
        assert lines[0].startswith("otel-netlat: error: missing capability"), lines[0]
        assert f"CAP_{dropped}" in lines[0], lines[0]
        assert seconds < 10, f"took {seconds:.1f}s to fail"


def test_sys_admin_variant(agents, veth_pair, tmp_path):
    """variants/sys-admin (kernels < 5.8). CAP_SYS_RESOURCE, which it adds for those kernels'
    RLIMIT_MEMLOCK accounting, is outside this sandbox's bounding set and cannot be granted
    here; this kernel (memory-cgroup accounting) does not use it."""
    out = tmp_path / "render"
    proc = make_deploy(
        "manifests",
        f"DEPLOY_DIR={out}",
        "VARIANT=sys-admin",
        f"KUBECTL={Path(sys.executable).parent / 'kubectl'}",
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all((out / "otel-netlat.yaml").read_text()) if d]
    caps = agent_capabilities(docs)
    grantable = [c for c in caps if mask([c]) & own_caps("CapBnd")]
    assert set(caps) - set(grantable) <= {"SYS_RESOURCE"}, caps
    agent = agents(grantable, filtered(veth_pair))
    agent.wait_ready()
    assert own_caps("CapEff", str(agent.pid)) == mask(grantable)
    assert_measures_traffic(agent, veth_pair, n=50)
    assert agent.stop(timeout=15)[0] == 0, agent.output()
