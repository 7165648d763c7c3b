"""Configuration files of the node's daemons: containerd, CNI, kubelet, kube-proxy, CoreDNS.

Every path a daemon would otherwise take from its defaults (/var/lib/containerd,
/opt/containerd, /var/lib/kubelet, /var/log/pods, /var/lib/cni/networks...) is moved under
the state directory, so teardown has one directory to remove.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from scripts.cluster import layout as L


def containerd_config(layout: L.Layout, pause_image: str) -> Path:
    """containerd 1.6 (config version 2) with the CRI plugin: runc on cgroupfs, CNI bridge."""
    d = layout.containerd
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{layout.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[{cri}]
  sandbox_image = "{pause_image}"
  # No AppArmor profile is loaded into the host's kernel on the test's behalf.
  disable_apparmor = true
  # Processes here lack CAP_SYS_RESOURCE, so none may lower its oom_score_adj: the sandbox's
  # -998 (and a Guaranteed pod's -997) are raised to containerd's own instead of failing runc.
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{d / "runc"}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d / "cni"}"
"""
    d.mkdir(parents=True, exist_ok=True)
    path = d / "config.toml"
    path.write_text(text)
    return path


def cni_config(layout: L.Layout) -> Path:
    """One bridge with the pods' gateway; host-local addresses kept in the state directory."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "netlat",
        "plugins": [
            {
                "type": "bridge",
                "bridge": L.BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                # A pod reaching its own Service through kube-proxy comes back on its port.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": L.POD_CIDR, "gateway": L.POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.state / "cni-ipam"),
                },
            }
        ],
    }
    d = layout.containerd / "cni"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "10-netlat.conflist"
    path.write_text(json.dumps(conf, indent=2))
    return path


def kubelet_config(layout: L.Layout) -> Path:
    """kubelet: cgroupfs under CGROUP_ROOT, cgroup v1 allowed, webhook auth, no image GC."""
    pki = layout.pki
    resolv = layout.state / "resolv.conf"
    # The pods' resolver gets only the cluster's DNS; the host's search domains stay out.
    resolv.write_text("")
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": L.NODE_IP,
        "healthzBindAddress": L.NODE_IP,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{L.CGROUP_ROOT}",
        # This host mounts cgroup v1 (with a v2 hierarchy beside it): kubelet >= 1.35 refuses
        # v1 unless told not to.
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "clusterDNS": [L.DNS_IP],
        "clusterDomain": L.CLUSTER_DOMAIN,
        "resolvConf": str(resolv),
        "podLogsDir": str(layout.state / "pod-logs"),
        "protectKernelDefaults": True,
        # The images were loaded by the test: never collected, and a busy shared disk does
        # not evict the pods.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "failSwapOn": False,
        # Its own -999 needs CAP_SYS_RESOURCE, which processes here do not have.
        "oomScoreAdj": 0,
        "serializeImagePulls": False,
    }
    path = layout.state / "kubelet-config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def kube_proxy_config(layout: L.Layout) -> Path:
    """kube-proxy in nftables mode: its own tables in the node's namespace, host untouched."""
    conf = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": {"kubeconfig": str(layout.kubeconfig("kube-proxy"))},
        "hostnameOverride": L.NODE_NAME,
        "clusterCIDR": L.CLUSTER_CIDR,
        "bindAddress": L.NODE_IP,
        "healthzBindAddress": f"{L.NODE_IP}:10256",
        "metricsBindAddress": f"{L.NODE_IP}:10249",
        # Pods share one bridge without br_netfilter: a reply from a Service's pod to a pod
        # must come back through the node to be un-NATed, so Service traffic is masqueraded.
        "masqueradeAll": True,
        "oomScoreAdj": 0,  # as kubelet's: no CAP_SYS_RESOURCE here
        # Zero: conntrack limits and timeouts are the host's (nf_conntrack_max is global).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
    }
    path = layout.state / "kube-proxy-config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def corefile(layout: L.Layout) -> Path:
    """CoreDNS serving the cluster domain from the API; nothing is forwarded anywhere."""
    text = f""".:53 {{
    bind {L.DNS_IP}
    errors
    health {L.NODE_IP}:8080
    ready {L.NODE_IP}:8181
    kubernetes {L.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {layout.kubeconfig("admin")} netlat
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
    path = layout.state / "Corefile"
    path.write_text(text)
    return path


def sysctl_covers(layout: L.Layout) -> dict[str, Path]:
    """One file per kernel tunable kubelet checks, holding the value it wants."""
    d = layout.state / "sysctl"
    d.mkdir(parents=True, exist_ok=True)
    covers = {}
    for name, value in L.KUBELET_SYSCTLS.items():
        path = d / name.replace("/", ".")
        path.write_text(f"{value}\n")
        covers[name] = path
    return covers
