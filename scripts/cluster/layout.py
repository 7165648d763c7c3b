"""Names, addresses and paths of the test's single-node cluster, in one place.

Set-up and teardown read the same constants, so teardown removes exactly what set-up made.
The whole cluster lives in one network namespace of its own (``NETNS``): the node's address,
the pod bridge, the Service rules kube-proxy writes and every pod's veth are there, and the
host keeps only one veth into it with a route to the pod range (so that a Prometheus on the
host can scrape pods, as a monitoring host would). Nothing the cluster does reaches another
address: the namespace has no default route.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

NETNS = "netlat-cluster"
HOST_VETH = "netlat-k8s0"
NODE_VETH = "node0"
HOST_IP = "10.241.0.1"
NODE_IP = "10.241.0.2"
LINK = "10.241.0.0/30"
POD_CIDR = "10.242.0.0/24"
POD_GATEWAY = "10.242.0.1"
CLUSTER_CIDR = "10.242.0.0/16"
SERVICE_CIDR = "10.243.0.0/24"
API_SERVICE_IP = "10.243.0.1"
#: CoreDNS answers on the node's address (outside the Service range, which kube-proxy guards).
DNS_IP = NODE_IP
BRIDGE = "netlat-br0"
NODE_NAME = "netlat-node"
CLUSTER_DOMAIN = "cluster.local"
#: Every pod cgroup is under this one, in every cgroup hierarchy.
CGROUP_ROOT = "otel-netlat-cluster"
API_PORT = 6443

#: kubelet sets these kernel tunables on the host when they differ (vm.overcommit_memory,
#: kernel.panic...). The test must not change the host, so kubelet runs in a mount namespace
#: of its own where each file is covered by one holding the value it wants, and with
#: protectKernelDefaults it would fail rather than write, should a cover be missing.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}

#: Host paths the runtime or CNI create when missing, outside the state directory: containerd
#: 1.6 puts its shims' sockets under /run/containerd whatever its configuration; libcni keeps
#: results under /var/lib/cni. Removed at teardown when the test created them.
HOST_DIRS = (Path("/run/containerd"), Path("/var/lib/cni"))


@dataclass(frozen=True)
class Layout:
    """Where one cluster's binaries and state are. ``state`` is removed whole at teardown."""

    bin: Path = REPO / "build" / "cluster" / "bin"
    state: Path = Path(os.environ.get("NETLAT_CLUSTER_STATE", "/var/lib/otel-netlat/cluster"))

    def binary(self, name: str) -> Path:
        return self.bin / name

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def containerd(self) -> Path:
        return self.state / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.state / "kubelet"

    @property
    def lock(self) -> Path:
        """Held while a cluster runs: two at once would share the namespace and the cgroups."""
        return self.state.parent / "cluster.lock"

    def kubeconfig(self, user: str) -> Path:
        return self.pki / f"{user}.kubeconfig"
