"""Teardown of whatever a cluster left: processes, mounts, cgroups, the namespace, the state.

Run after the daemons were stopped in order (scripts/cluster/node.py), and before a new
cluster starts (a run that was killed leaves its pieces behind). Only what the cluster made
is touched, each thing found by where it lives: processes in its network namespace or its
cgroups or talking to its containerd socket, mounts under its state directory, cgroups under
CGROUP_ROOT. Processes are ended by PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from scripts.cluster import layout as L
from scripts.cluster import network

CGROUP_FS = Path("/sys/fs/cgroup")


def cgroup_roots() -> list[Path]:
    """CGROUP_ROOT in every mounted hierarchy (v1 controllers, name=systemd, the v2 one)."""
    roots = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mountpoint, fstype, *_ = line.split()
        if fstype in ("cgroup", "cgroup2") and mountpoint.startswith(str(CGROUP_FS)):
            roots.append(Path(mountpoint) / L.CGROUP_ROOT)
    return roots


def make_cgroup_roots() -> None:
    """kubelet wants its cgroupRoot to exist; a v1 cpuset child needs its CPUs and nodes set."""
    for root in cgroup_roots():
        root.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (root / name).exists() and not (root / name).read_text().strip():
                (root / name).write_text((root.parent / name).read_text())


def cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for root in cgroup_roots():
        for procs in root.rglob("cgroup.procs") if root.exists() else ():
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue
    return pids


def shim_pids(layout: L.Layout) -> set[int]:
    """containerd's shims for this cluster: they name its socket on their command line."""
    needle = str(layout.containerd_socket).encode()
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    pids.add(int(proc.name))
            except OSError:
                continue
    return pids


def leftover_pids(layout: L.Layout) -> set[int]:
    return (set(network.pids_inside()) | cgroup_pids() | shim_pids(layout)) - {os.getpid()}


def kill(pids: set[int], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
            time.sleep(0.1)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def mounts_under(path: Path) -> list[str]:
    """Mount points under ``path``, deepest first (as they must be unmounted)."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_all(path: Path) -> None:
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_cgroups() -> None:
    """rmdir every cgroup under CGROUP_ROOT, leaves first (they hold no process any more)."""
    for root in cgroup_roots():
        if root.exists():
            for d in sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                d.rmdir()
            root.rmdir()


def sweep(layout: L.Layout, created_host_dirs: tuple[Path, ...] = ()) -> None:
    """Remove everything of a cluster whose daemons are stopped (or were killed)."""
    kill(leftover_pids(layout))
    unmount_all(layout.state)
    remove_cgroups()
    network.delete()
    subprocess.run(["rm", "-rf", "--one-file-system", str(layout.state)], check=True)
    for d in created_host_dirs:
        _remove_empty_tree(d)


def _remove_empty_tree(d: Path) -> None:
    """rmdir ``d`` and its empty subdirectories; anything with a file in it stays."""
    if not d.is_dir():
        return
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        d.rmdir()


def leftovers(layout: L.Layout) -> list[str]:
    """What of a cluster still exists; empty after a complete teardown."""
    found = []
    if pids := leftover_pids(layout):
        found.append(f"processes {sorted(pids)}")
    if points := mounts_under(layout.state):
        found.append(f"mounts {points}")
    found += [f"cgroup {r}" for r in cgroup_roots() if r.exists()]
    if network.exists():
        found.append(f"network namespace {L.NETNS}")
    if Path(f"/sys/class/net/{L.HOST_VETH}").exists():
        found.append(f"link {L.HOST_VETH}")
    if layout.state.exists():
        found.append(f"directory {layout.state}")
    return found
