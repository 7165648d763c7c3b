#!/usr/bin/env python3
"""The kernel matrix: run the kernel-level test subset inside every installed Debian kernel.

The host (6.18) has neither kprobes nor fentry, so the function-hook backends can only be
proven in stock kernels booted under qemu (scripts/vm/run_in_vm.py; see tests/vm/README.md).
For each kernel this boots one VM (headers hidden, host root read-only) and runs the
subset below: every backend's exact counts over veth and BTF offsets against bpftool.
Results come back through a writable share (build/vm-results/): a JUnit file and a summary
line per kernel. Exit status: 0 only if every kernel's run passed.

    scripts/vm/test_kernels.py [--kernels 6.1,6.12] [--timeout 600] [--sequential]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "scripts" / "vm" / "run_in_vm.py"
RESULTS = ROOT / "build" / "vm-results"
#: The kernel-level subset: backends (tracepoint, kprobe, fentry) with exact counts, and BTF.
TESTS = (
    "tests/kernel/test_backends_kernel.py",
    "tests/kernel/test_btf.py",
    # Ground truth on the stock kernels, the subset that fits qemu's software CPU: the socket
    # stage (sock_def_readable + fexit on 6.1) with a reader 0.3 s late, netem's delay as the
    # qdisc wait (netem is a module there; the host has none), and segments behind a socket
    # lock held 0.3 s (tcp_backlog).
    "tests/kernel/test_truth_socket.py::test_udp_burst_each_datagram_waits_the_readers_delay",
    "tests/kernel/test_truth_socket.py::test_tcp_data_before_accept_waits_until_read",
    "tests/kernel/test_truth_qdisc.py::test_gso_packets_split_in_software_each_segment_measured",
    # forward: the node-shaped topology, each hop once, and 1,000 rules measurably slower.
    "tests/kernel/test_truth_forward.py",
    "tests/kernel/test_truth_tcp_backlog.py",
    "tests/kernel/test_stages_kernel.py::test_backlog_measures_rps_steered_napi_packets",
    "tests/vm/test_truth_netem.py",
    # The real-driver path: two virtio-net NICs joined by a hub inside qemu (NAPI, GRO, TX
    # completion): exact counts per stage and the tx_ring stage.
    "tests/vm/test_real_driver.py",
    # accept: a server 0.3 s slow to accept (the stage ends at fexit, so only in the guests).
    "tests/vm/test_truth_accept.py",
)
#: A start-up time budget for the host; qemu's software CPU is several times slower.
DESELECT = ("tests/kernel/test_btf.py::test_load_is_fast",)


def installed_kernels() -> list[str]:
    out = subprocess.run([sys.executable, str(RUNNER), "--list"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"test-kernels: {RUNNER} --list failed: {out.stderr.strip()}")
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def junit_summary(path: Path) -> str:
    """``N tests, F failed, E errors, S skipped`` from a JUnit file (or why there is none)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return f"no JUnit result ({e})"
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return "no testsuite in JUnit result"
    a = suite.attrib
    return (
        f"{a.get('tests')} tests, {a.get('failures')} failed, {a.get('errors')} errors, "
        f"{a.get('skipped')} skipped"
    )


def junit_properties(path: Path) -> list[str]:
    """``name: value`` of every recorded property (the tests record sent/starts/samples)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    return [f"{p.get('name')}: {p.get('value')}" for p in root.iter("property")]


def run_kernel(kver: str, timeout: int) -> tuple[str, int, str, float]:
    """Boot ``kver`` and run the subset; returns (kernel, exit code, summary, seconds)."""
    junit = RESULTS / f"junit-{kver}.xml"
    log = RESULTS / f"log-{kver}.txt"
    junit.unlink(missing_ok=True)
    cmd = [
        sys.executable, str(RUNNER), kver, "--timeout", str(timeout),
        "--share-rw", str(RESULTS), "--pass-env", "CI", "--env", "CI=true",
        # -s: the ground-truth rows (injected vs measured) the tests print land in the log.
        "--", ".venv/bin/pytest", "-q", "-s", "-p", "no:cacheprovider",
        f"--junitxml={junit}", *TESTS, *(f"--deselect={t}" for t in DESELECT),
    ]  # fmt: skip
    t0 = time.monotonic()
    with log.open("w") as out:
        try:
            # The runner bounds the VM with --timeout; this outer bound only catches a hung runner.
            proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout + 60)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return kver, rc, junit_summary(junit), time.monotonic() - t0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", help="comma list of kernel versions or prefixes (default: all installed)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per VM (default 600)")
    p.add_argument("--sequential", action="store_true", help="one VM at a time (default: all in parallel)")
    args = p.parse_args(argv)
    kernels = args.kernels.split(",") if args.kernels else installed_kernels()
    if not kernels:
        print("test-kernels: no Debian test kernel installed (scripts/install-kernels.sh)", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    t0 = time.monotonic()
    workers = 1 if args.sequential else len(kernels)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda k: run_kernel(k, args.timeout), kernels))
    wall = time.monotonic() - t0
    failed = 0
    lines = []
    for kver, rc, summary, secs in results:
        ok = rc == 0
        failed += not ok
        lines.append(f"{'PASS' if ok else 'FAIL'} {kver}: exit {rc}; {summary}; {secs:.0f} s")
        if not ok:
            print(f"--- {kver}: last lines of {RESULTS / f'log-{kver}.txt'}", file=sys.stderr)
            tail = (RESULTS / f"log-{kver}.txt").read_text(errors="replace").splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
    for kver, *_ in results:
        lines += [f"  {kver} {prop}" for prop in junit_properties(RESULTS / f"junit-{kver}.xml")]
    lines.append(f"test-kernels: {len(results) - failed}/{len(results)} kernels passed in {wall:.0f} s wall")
    (RESULTS / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
