"""Two virtio-net NICs of the qemu guest, each moved into a namespace of its own.

``scripts/vm/run_in_vm.py`` gives every guest two virtio-net NICs (their MACs in
``NETLAT_VM_NICS``) joined
only to each other by a hub inside qemu: packets between the namespaces cross a real driver
(NAPI, GRO, interrupts, TX completion), never the host's network. The pair is a
``VethPair`` (same fields), so every traffic helper of ``tests.support.netns`` runs on it.
Deleting a namespace hands its NIC back to the root namespace; the next fixture waits for it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import VethPair, address_pair, open_text, remove_veth_pair, sh

IN_VM = os.environ.get("NETLAT_VM") == "1"
#: The guest NICs' MACs, from the VM harness (NIC_PAIR_MACS there).
NIC_PAIR_MACS = tuple(os.environ.get("NETLAT_VM_NICS", "").split(",")) if IN_VM else ()


def _nic_named(mac: str) -> str | None:
    for dev in Path("/sys/class/net").iterdir():
        try:
            if (dev / "address").read_text().strip() == mac:
                return dev.name
        except OSError:
            continue
    return None


def find_nics(timeout_s: float = 30.0) -> tuple[str, str]:
    """The two NICs' names in the root namespace, once the driver has both (signal: sysfs)."""
    sh("modprobe", "virtio_net", check=False)  # built in on some kernels, a module on Debian's
    deadline = time.monotonic() + timeout_s
    while True:
        names = [_nic_named(mac) for mac in NIC_PAIR_MACS]
        if all(names):
            return names[0], names[1]
        if time.monotonic() > deadline:
            raise AssertionError(f"virtio-net NICs {NIC_PAIR_MACS} not found in /sys/class/net")
        time.sleep(0.05)


def _wait_carrier(ns: str, dev: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while open_text(ns, f"/sys/class/net/{dev}/operstate") != "up":
        if time.monotonic() > deadline:
            raise AssertionError(f"{dev} in {ns} has no carrier")
        time.sleep(0.05)


def make_nic_pair() -> VethPair:
    """Namespaces a and b, NIC 0 in a and NIC 1 in b, addressed, static neighbours."""
    nic_a, nic_b = find_nics()
    tag = secrets.token_hex(3)
    pair = VethPair(
        a=f"nl-na-{tag}",
        b=f"nl-nb-{tag}",
        dev_a=nic_a,
        dev_b=nic_b,
        a4="10.214.0.1",
        b4="10.214.0.2",
        a6="fd00:214::1",
        b6="fd00:214::2",
    )
    sh("ip", "netns", "add", pair.a)
    sh("ip", "netns", "add", pair.b)
    try:
        for ns, dev in ((pair.a, nic_a), (pair.b, nic_b)):
            sh("ip", "link", "set", dev, "netns", ns)
        address_pair(pair)
        for ns, dev in ((pair.a, nic_a), (pair.b, nic_b)):
            _wait_carrier(ns, dev)
    except Exception:
        remove_veth_pair(pair)
        raise
    return pair


@pytest.fixture
def nic_pair(require_root) -> Iterator[VethPair]:
    """The guest's two virtio-net NICs in namespaces a and b (qemu guests only: fails on a
    host, which has no such pair)."""
    assert IN_VM, "the virtio-net pair exists only in the qemu guests (make test-kernels)"
    assert len(NIC_PAIR_MACS) == 2, f"NETLAT_VM_NICS names two MACs, not {NIC_PAIR_MACS}"
    pair = make_nic_pair()
    try:
        yield pair
    finally:
        remove_veth_pair(pair)
