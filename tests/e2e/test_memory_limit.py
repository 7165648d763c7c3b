"""The agent in a 256 MiB memory cgroup with 10,000 series, and the series cap reached.

The agent joins a transient leaf cgroup before it execs (so its compile, its maps — BPF map
memory is charged to the cgroup too — and its exports all count), with the memory limit a
DaemonSet would give it. 3,500 addresses of a test namespace (three entries each: backlog,
stack, socket) ask for 10,500 series where the address map holds 10,000: the agent must
run, say once that the cap is reached, and count what folds.

The cgroup is made wherever this machine has the memory controller: cgroup v2 (``memory.max``)
if its hierarchy has it, else cgroup v1 (``memory.limit_in_bytes``; a host with v1 mounted
and a v2 hierarchy beside it has the memory controller in v1). Nothing is mounted; the leaf
is removed afterwards.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, free_port
from tests.support.netns import in_netns
from tests.support.pod_net import Page, pod_ip, read_page, scrape

LIMIT = 256 << 20
MAX_SERIES = 10_000
ADDRESSES = 3_500  # 10,500 entries wanted: the cap is reached
MORE = 500  # sent after the cap was reached: folded too, and no second log line
UDP_PORT = 5354
CAP_LINE = "series cap reached"


class MemoryCgroup:
    """A leaf cgroup with a memory limit, in the hierarchy that has the memory controller."""

    def __init__(self, limit: int) -> None:
        root, own, self.v2 = _memory_hierarchy()
        base = root if self.v2 else root / own.lstrip("/")  # v2: under the root, which may delegate
        self.path = base / f"nl-ttl-{secrets.token_hex(3)}"
        self.path.mkdir()
        try:
            if self.v2:
                if "memory" not in (self.path / "cgroup.controllers").read_text().split():
                    raise AssertionError(f"cgroup v2 at {root} does not delegate the memory controller")
                (self.path / "memory.max").write_text(str(limit))
                (self.path / "memory.swap.max").write_text("0")
            else:
                (self.path / "memory.limit_in_bytes").write_text(str(limit))
                memsw = self.path / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # no swapping around the limit either
                    memsw.write_text(str(limit))
        except BaseException:
            self.path.rmdir()
            raise

    def join_and_exec(self) -> list[str]:
        """A wrapper that moves itself into the cgroup, then execs the command (same pid)."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh"]

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        procs = (self.path / "cgroup.procs").read_text().split()
        assert not procs, f"{self.path} still holds {procs}"
        self.path.rmdir()


def _memory_hierarchy() -> tuple[Path, str, bool]:
    """(mount point, this process's cgroup in it, whether it is v2) of the memory controller."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    own = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    for _, point, fstype, *_ in mounts:
        controllers = Path(point, "cgroup.controllers")
        if fstype == "cgroup2" and controllers.exists() and "memory" in controllers.read_text().split():
            return Path(point), next(p for h, _, p in own if h == "0"), True
    for _, point, fstype, options, *_ in mounts:
        if fstype == "cgroup" and "memory" in options.split(","):
            return Path(point), next(p for _, names, p in own if "memory" in names.split(",")), False
    raise AssertionError("no cgroup hierarchy with the memory controller is mounted")


@pytest.fixture
def memory_cgroup(require_root) -> Iterator[MemoryCgroup]:
    cgroup = MemoryCgroup(LIMIT)
    try:
        yield cgroup
    finally:
        cgroup.remove()


def send_to(netns: str, first: int, n: int) -> None:
    """One datagram to each of ``n`` addresses, each read before the next is sent."""
    with in_netns(netns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tx, rx:
        rx.bind(("0.0.0.0", UDP_PORT))
        rx.settimeout(5.0)
        for i in range(first, first + n):
            tx.sendto(b"m", (pod_ip(i), UDP_PORT))
            rx.recv(64)


def page_when(agent: AgentProcess, ok, what: str) -> Page:
    """Scrape (gzipped, as Prometheus does) until the page satisfies ``ok``."""

    def attempt() -> Page | None:
        page = read_page(scrape(agent.url))
        return page if ok(page) else None

    return agent.wait_until(attempt, 180, what, every=1.0)


def vm_hwm(pid: int) -> int:
    """The process's peak resident set."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.M).group(1)) * 1024


def test_ten_thousand_series_in_256_mib(memory_cgroup, pod_netns, tmp_path) -> None:
    flags = ["--netns", pod_netns, "--address-labels", "--ipv4-prefix", "32"]
    flags += ["--max-series", str(MAX_SERIES), "--interval", "1"]
    # OTLP on as well (to a port nobody listens on): both readers collect every series.
    flags += ["--otlp-endpoint", f"http://127.0.0.1:{free_port()}", "--otlp-interval", "2"]
    agent = AgentProcess(flags, None, tmp_path / "agent.log", wrapper=memory_cgroup.join_and_exec())
    try:
        started = agent.wait_ready(timeout=180)
        assert str(agent.pid) in (memory_cgroup.path / "cgroup.procs").read_text().split()
        send_to(pod_netns, 0, ADDRESSES)
        t0 = time.monotonic()
        page = page_when(agent, lambda p: p.folded and p.live_flows >= MAX_SERIES, "the cap reached")
        render_s = time.monotonic() - t0
        send_to(pod_netns, ADDRESSES, MORE)
        folded_before = page.folded
        page = page_when(agent, lambda p: p.folded > folded_before, "the later addresses folded")
        text = agent.output(None)
        report = (
            f"series={page.live_flows:.0f} folded={page.folded:.0f} "
            f"agent_peak_rss={vm_hwm(agent.pid) / 2**20:.1f}MiB "
            f"cgroup_peak={memory_cgroup.peak() / 2**20:.1f}MiB limit={LIMIT >> 20}MiB "
            f"ready_s={started:.1f} first_full_page_s={render_s:.1f}"
        )
        print(report)
        assert agent.running and memory_cgroup.oom_kills() == 0, report
        assert page.live_flows == MAX_SERIES, report
        assert folded_before > 0, report  # counted, and still counting (page_when)
        assert page.overflow, "no otel.metric.overflow series"
        assert text.count(CAP_LINE) == 1, f"the cap must be logged exactly once:\n{text}"
        assert memory_cgroup.peak() <= LIMIT
    finally:
        agent.stop()  # and reaped: the cgroup is empty for the fixture to remove
