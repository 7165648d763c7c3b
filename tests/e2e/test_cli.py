"""The commands as a user meets them: one clear line and exit 2 on bad input, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from tests.support.agent import REPO
from tests.support.netns import udp_lockstep, udp_read_after

CLI = [sys.executable, "-m", "otel_netlat.commands.cli"]
ATTACHED = re.compile(r"^attached\b")  # watch's line on stderr (log lines start with a time)


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--interval", "-1"], "--interval"),
        (["run", "--listen", "nonsense"], "--listen"),
        (["run", "--stages", "bogus"], "bogus"),
        (["run", "--buckets", "0.002,0.001"], "--buckets"),
        (["run", "--netns", "no-such-namespace-xyz"], "no-such-namespace-xyz"),
        (["run", "--hooks", "kprobe"], "kprobe"),
    ],
)
def test_bad_input_is_one_line(require_root, args, needle):
    assert_one_line_error(run_cli(*args), needle)


def test_busy_port(require_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = run_cli("run", "--listen", f"127.0.0.1:{port}")
    assert_one_line_error(proc, str(port))


def test_check_explains_this_kernel(require_root):
    proc = run_cli("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for stage in ("backlog", "stack", "socket", "qdisc", "forward", "tcp_backlog", "drops"):
        assert f"stage {stage}" in out
    assert "btf" in out and "tracefs" in out and "privileges" in out
    assert "run would start" in out


def test_watch_prints_histograms(require_root, veth_pair, start_process):
    watch = start_process(
        [*CLI, "watch", "--netns", veth_pair.b, "--interval", "1.5", "--count", "1"],
        name="watch",
        separate_stdout=True,
    )
    # On stderr once the programs are attached and the baseline read: the first interval runs.
    watch.wait_for_line(ATTACHED, timeout=60)
    udp_lockstep(veth_pair, 200)
    assert watch.wait_exit(60) == 0, watch.output()
    out = watch.stdout_text()
    assert "backlog ipv4 udp: 200 packets" in out, out
    assert "distribution" in out


def test_slow_prints_exactly_the_delayed_flow(require_root, veth_pair, start_process):
    """``otel-netlat slow --json``: one JSON object per slow sample, each naming the flow that
    waited (a reader 0.3 s late), none for a fast flow beside it."""
    n, delay = 8, 0.3
    slow = start_process(
        [*CLI, "slow", "--json", "--slow-threshold", "0.1", "--netns", veth_pair.b, "--count", str(n)],
        name="slow",
        separate_stdout=True,
    )
    slow.wait_for_line(ATTACHED, timeout=60)
    assert udp_lockstep(veth_pair, 200, socket.AF_INET6) == 200  # fast: no record
    src, dst = udp_read_after(veth_pair, n, delay)
    assert slow.wait_exit(30) == 0, slow.output()
    records = [json.loads(line) for line in slow.stdout_text().splitlines()]
    assert len(records) == n, records
    for r in records:
        assert (r["source.address"], r["source.port"]) == src, r
        assert (r["destination.address"], r["destination.port"]) == dst, r
        assert r["netlat.stage"] == "socket" and r["network.transport"] == "udp", r
        assert delay * 0.95 <= r["latency_seconds"] <= delay + 0.25, r
    assert re.search(rf"^{n} slow records printed; lost: rate_limited 0, ring_full 0", slow.output(), re.M)


def test_sigterm_detaches_and_exits_zero(require_root, start_agent):
    agent = start_agent("--interval", "1")
    rc, seconds = agent.stop()
    assert rc == 0, agent.output()
    assert seconds < 5
    assert "Traceback" not in agent.output()


def test_sigint_too(require_root, start_agent):
    agent = start_agent()  # /healthz 200: attached, the run loop is running
    rc, seconds = agent.stop(timeout=10, sig=signal.SIGINT)
    assert rc == 0, agent.output()
    assert seconds < 5
    assert "Traceback" not in agent.output()
