"""The node's network namespace, its veth to the host, and the host's route to the pods.

Made before the daemons start, removed after they stop. Refuses to start when an address
range of the cluster is already routed on the host: the test never shadows a real network.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from scripts.cluster import layout as L

NETNS_PATH = Path("/run/netns") / L.NETNS


def run(*argv: str) -> str:
    """Run a command; its stdout, or a failure that names the command and its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def in_netns(*argv: str | Path) -> list[str]:
    """``argv`` run in the node's network namespace. nsenter, not ``ip netns exec``: that one
    also remounts /sys, which would hide the cgroup hierarchies from kubelet and containerd."""
    return ["nsenter", f"--net={NETNS_PATH}", "--", *map(str, argv)]


def check_free() -> None:
    """Fail if a host route overlaps one of the cluster's ranges (other than our own)."""
    ours = {L.LINK, L.POD_CIDR}
    wanted = [ipaddress.ip_network(n) for n in (L.LINK, L.CLUSTER_CIDR, L.SERVICE_CIDR)]
    for route in json.loads(run("ip", "-j", "-4", "route", "show", "table", "all")):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("dev") == L.HOST_VETH or dst in ours:
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0:
            continue
        for w in wanted:
            if net.overlaps(w):
                raise RuntimeError(f"host route {dst} (dev {route.get('dev')}) overlaps the cluster's {w}")


def exists() -> bool:
    return NETNS_PATH.exists()


def create() -> None:
    """Namespace, veth pair (host side HOST_IP, node side NODE_IP), forwarding inside, route on the host."""
    run("ip", "netns", "add", L.NETNS)
    run("ip", "link", "add", L.HOST_VETH, "type", "veth", "peer", "name", L.NODE_VETH, "netns", L.NETNS)
    run("ip", "addr", "add", f"{L.HOST_IP}/30", "dev", L.HOST_VETH)
    run("ip", "link", "set", L.HOST_VETH, "up")
    run(*in_netns("ip", "link", "set", "lo", "up"))
    run(*in_netns("ip", "addr", "add", f"{L.NODE_IP}/30", "dev", L.NODE_VETH))
    run(*in_netns("ip", "link", "set", L.NODE_VETH, "up"))
    # Per namespace: the node routes between its veth, its bridge and its Services.
    run(*in_netns("sysctl", "-qw", "net.ipv4.ip_forward=1"))
    run("ip", "route", "add", L.POD_CIDR, "via", L.NODE_IP, "dev", L.HOST_VETH)


def delete() -> None:
    """The namespace, and with it both veth ends and the host's route through them."""
    subprocess.run(["ip", "link", "del", L.HOST_VETH], capture_output=True)
    if exists():
        run("ip", "netns", "del", L.NETNS)


def pids_inside() -> list[int]:
    """Every process whose network namespace is the node's (a leftover if any remains)."""
    if not exists():
        return []
    inode = NETNS_PATH.stat().st_ino
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "ns" / "net").stat().st_ino == inode:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
