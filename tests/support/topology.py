"""A node-shaped topology: two "pod" namespaces on veth pairs whose host ends sit in a
"node" namespace, which routes between them (``routed``) or bridges them (``bridged``).

Every pod packet that crosses the node is received by the node, routed or bridged, sent on a
veth and received again in the pod, as on a Kubernetes node. Traffic stays inside the
namespaces the fixture makes.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.netns import sh, socket_in


@dataclass
class Node:
    """Namespaces ``node``, ``pod1``, ``pod2``; ``pod1``/``pod2`` addresses; the node's own."""

    node: str
    pod1: str
    pod2: str
    ip1: str
    ip2: str
    node_ip: str

    @property
    def netns_inodes(self) -> tuple[int, ...]:
        return tuple(os.stat(f"/run/netns/{ns}").st_ino for ns in (self.node, self.pod1, self.pod2))

    def in_node(self, *args: str) -> None:
        sh("ip", "netns", "exec", self.node, *args)


def _make(mode: str) -> Node:
    tag = secrets.token_hex(3)
    o = int(tag[:2], 16) % 250 + 1
    node = Node(f"nl-node-{tag}", f"nl-p1-{tag}", f"nl-p2-{tag}", "", "", "")
    for ns in (node.node, node.pod1, node.pod2):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for i, pod in ((1, node.pod1), (2, node.pod2)):
        sh(
            "ip",
            "-n",
            node.node,
            "link",
            "add",
            f"h{i}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod,
        )
        sh("ip", "-n", node.node, "link", "set", f"h{i}", "up")
        sh("ip", "-n", pod, "link", "set", "eth0", "up")
    if mode == "routed":
        node.ip1, node.ip2, node.node_ip = f"10.214.{o}.2", f"10.215.{o}.2", f"10.214.{o}.1"
        sh("ip", "-n", node.node, "addr", "add", f"10.214.{o}.1/24", "dev", "h1")
        sh("ip", "-n", node.node, "addr", "add", f"10.215.{o}.1/24", "dev", "h2")
        sh("ip", "netns", "exec", node.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for pod, ip, gw in ((node.pod1, node.ip1, f"10.214.{o}.1"), (node.pod2, node.ip2, f"10.215.{o}.1")):
            sh("ip", "-n", pod, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", pod, "route", "add", "default", "via", gw)
    else:
        node.ip1, node.ip2, node.node_ip = f"10.216.{o}.2", f"10.216.{o}.3", f"10.216.{o}.1"
        sh("ip", "-n", node.node, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", node.node, "addr", "add", f"{node.node_ip}/24", "dev", "br0")
        sh("ip", "-n", node.node, "link", "set", "br0", "up")
        for i, pod, ip in ((1, node.pod1, node.ip1), (2, node.pod2, node.ip2)):
            sh("ip", "-n", node.node, "link", "set", f"h{i}", "master", "br0")
            sh("ip", "-n", pod, "addr", "add", f"{ip}/24", "dev", "eth0")
    return node


def _remove(node: Node) -> None:
    for ns in (node.node, node.pod1, node.pod2):
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(params=["routed", "bridged"])
def node_topology(request, require_root) -> Iterator[Node]:
    node = _make(request.param)
    try:
        yield node
    finally:
        _remove(node)


@pytest.fixture
def routed_node(require_root) -> Iterator[Node]:
    node = _make("routed")
    try:
        yield node
    finally:
        _remove(node)


def udp_lockstep_between(src_ns: str, dst_ns: str, dst_ip: str, n: int) -> int:
    """``n`` datagrams ``src_ns`` → ``dst_ns``, each read before the next is sent."""
    rx = socket_in(dst_ns, socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket_in(src_ns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.settimeout(5.0)
    with rx, tx:
        rx.bind((dst_ip, 0))
        got = 0
        for _ in range(n):
            tx.sendto(b"f" * 64, rx.getsockname())
            rx.recv(2048)
            got += 1
    return got


def nft_forward_rules(node: Node, count: int) -> None:
    """``count`` rules in the node's forward chain that match nothing here: each packet walks them."""
    lines = [
        "table inet netlat_test {",
        "  chain netlat_fwd {",
        "    type filter hook forward priority 0; policy accept;",
    ]
    lines += [f"    ip saddr 10.250.{i // 250}.{i % 250 + 1} counter drop" for i in range(count)]
    lines += ["  }", "}"]
    sh("ip", "netns", "exec", node.node, "nft", "-f", "/dev/stdin", input="\n".join(lines) + "\n")
