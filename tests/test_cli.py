"""The commands as a user meets them: one clear line and exit 2 on bad input, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.agent import REPO, free_port
from tests.support.netns import udp_lockstep

CLI = [sys.executable, "-m", "otel_netlat.commands.cli"]


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
    for stage in ("backlog", "stack", "socket", "qdisc", "drops"):
        assert f"stage {stage}" in out
    assert "btf" in out and "tracefs" in out and "privileges" in out
    assert "run would start" in out


def test_watch_prints_histograms(require_root, veth_pair):
    proc = subprocess.Popen(
        [*CLI, "watch", "--netns", veth_pair.b, "--interval", "1.5", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(1.0)  # let it compile and attach; the first interval starts after that
    udp_lockstep(veth_pair, 200)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "backlog ipv4 udp: 200 packets" in out, out
    assert "distribution" in out


def test_sigterm_detaches_and_exits_zero(require_root, start_agent):
    agent = start_agent("--interval", "1")
    rc, seconds = agent.stop()
    assert rc == 0, agent.output()
    assert seconds < 5
    assert "Traceback" not in agent.output()


def test_sigint_too(require_root):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "run", "--listen", f"127.0.0.1:{port}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in out
