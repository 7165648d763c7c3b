"""Two namespaces joined by veth, and UDP load between them from long-lived processes.

The namespaces are the test suite's (``tests/support/netns.py``): private addresses,
static neighbours, GRO off (the veth backlog path, so every stage sees every datagram).
Sender (namespace a) and receiver (namespace b) are ``bench.load`` processes started once
through ``ip netns exec`` and driven through shared memory, so a run is just its window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import Shared, Word
from bench.stats import cpu_ns
from tests.support.netns import VethPair, make_veth_pair, remove_veth_pair

REPO = Path(__file__).resolve().parent.parent
CLOSED_PORT = 9  # nobody listens there in namespace b: every datagram is dropped (NO_SOCKET)
DRAIN_S = 0.05  # after the sender stops: datagrams still in flight reach the receiver


@dataclass
class LoadResult:
    sent: int
    received: int
    seconds: float  # the window: sender started to sender stopped
    cpu_s: float  # sender + receiver + ksoftirqd CPU time during the window

    @property
    def rate(self) -> float:
        """Datagrams received per second."""
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_cpu_s(self) -> float:
        """Datagrams received per CPU-second spent moving them.

        No IRQ time accounting here: softirq work done in a task's context is charged to
        that task, the rest to ksoftirqd, so this counts every CPU-second the packets cost
        and none that other tenants of the machine take from us.
        """
        return self.received / self.cpu_s if self.cpu_s > 0 else 0.0


def ksoftirqd_pids() -> list[int]:
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().startswith("ksoftirqd/"):
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


class Traffic:
    """A veth pair (a → b) with a sender and a receiver ready; ``close()`` removes it all."""

    def __init__(self, max_life_s: float | None = None) -> None:
        """``max_life_s``: how long the load processes may live (bench.load's own default,
        a safety net for an orchestrator that dies, otherwise)."""
        self.max_life = [] if max_life_s is None else ["--max-life", str(max_life_s)]
        self.pair: VethPair = make_veth_pair()
        self.procs: list[subprocess.Popen] = []
        fd, self.shm_path = tempfile.mkstemp(prefix="otel-netlat-bench-", dir="/dev/shm")
        os.close(fd)
        try:
            self.shm = Shared(self.shm_path, create=True)
            self.receiver = self._start(self.pair.b, "recv", self.pair.b4)
            deadline = time.monotonic() + 10
            while not self.shm[Word.RECV_PORT]:
                if time.monotonic() > deadline or self.receiver.poll() is not None:
                    raise RuntimeError("the benchmark's UDP receiver did not start")
                time.sleep(0.01)
            self.port = self.shm[Word.RECV_PORT]
            self.sender = self._start(self.pair.a, "send", self.pair.b4)
        except BaseException:
            self.close()
            raise
        self.busy = [self.sender.pid, self.receiver.pid, *ksoftirqd_pids()]

    @property
    def netns_inodes(self) -> tuple[int, int]:
        return self.pair.netns_inodes

    def _start(self, ns: str, role: str, addr: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.load", role, self.shm_path, addr]
            + self.max_life,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def _cpu(self) -> float:
        return sum(cpu_ns(pid) for pid in self.busy) / 1e9

    def run(self, duration: float, pps: float = 0.0, port: int | None = None) -> LoadResult:
        """UDP 64-byte datagrams a → b for ``duration`` s (saturating, or paced at ``pps``)."""
        if self.sender.poll() is not None or self.receiver.poll() is not None:
            raise RuntimeError("a benchmark load process exited")
        self.shm[Word.PORT] = port or self.port
        self.shm[Word.PPS] = int(pps)
        sent0, got0, cpu0 = self.shm[Word.SENT], self.shm[Word.RECEIVED], self._cpu()
        t0 = time.monotonic()
        self.shm[Word.RUN] = 1
        try:
            time.sleep(duration)
        finally:
            self.shm[Word.RUN] = 0
        seconds = time.monotonic() - t0
        time.sleep(DRAIN_S)
        return LoadResult(
            self.shm[Word.SENT] - sent0, self.shm[Word.RECEIVED] - got0, seconds, self._cpu() - cpu0
        )

    def to_closed_port(self, duration: float) -> int:
        """Saturating UDP a → b to a port nobody listens on: every datagram is dropped
        (``kfree_skb``, reason NO_SOCKET). Returns datagrams sent."""
        return self.run(duration, port=CLOSED_PORT).sent

    def close(self) -> None:
        if hasattr(self, "shm"):
            self.shm[Word.RUN] = 0
            self.shm[Word.STOP] = 1
        for proc in self.procs:
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if hasattr(self, "shm"):
            self.shm.close()
        Path(self.shm_path).unlink(missing_ok=True)
        remove_veth_pair(self.pair)


def settle(seconds: float = 0.1) -> None:
    """Let softirq work on the other CPU finish before reading counters."""
    time.sleep(seconds)
