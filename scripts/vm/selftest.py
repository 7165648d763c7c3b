#!/usr/bin/python3
"""Self-test of the VM harness, run inside a guest by scripts/vm/run_in_vm.py.

    scripts/vm/run_in_vm.py 6.12 --keep-headers --timeout 180 -- /usr/bin/python3 scripts/vm/selftest.py
    scripts/vm/run_in_vm.py 6.12 --timeout 60 -- /usr/bin/python3 scripts/vm/selftest.py --no-bcc --headerless

Checks: the guest environment (kernel, NETLAT_VM*, writable /run and /tmp, read-only host
files), which receive-path tracepoints and functions exist, a network namespace pair joined by
veth (ping across it), and with BCC a kprobe and a KFUNC_PROBE (fentry) on ip_rcv counting
UDP datagrams sent on loopback. Prints one "SELFTEST ..." line per result; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

TRACEPOINTS = [
    "net:netif_rx",
    "net:netif_receive_skb",
    "net:net_dev_queue",
    "net:net_dev_start_xmit",
    "skb:kfree_skb",
    "skb:consume_skb",
    "skb:skb_copy_datagram_iovec",
    "sock:sk_data_ready",
    "sock:sock_recv_length",
]
FUNCTIONS = ["ip_rcv", "ip_rcv_finish", "ipv6_rcv", "ip6_rcv_finish", "sock_def_readable"]

failures: list[str] = []


def result(name: str, ok: bool, detail: str = "") -> None:
    print(f"SELFTEST {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        failures.append(name)


def sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True)


def check_env(headerless: bool) -> None:
    kver = os.uname().release
    result(
        "kernel",
        os.environ.get("NETLAT_VM_KERNEL") == kver and os.environ.get("NETLAT_VM") == "1",
        f"uname -r {kver}, NETLAT_VM={os.environ.get('NETLAT_VM')}, "
        f"NETLAT_VM_KERNEL={os.environ.get('NETLAT_VM_KERNEL')}",
    )
    for d in ("/run", "/tmp", "/root"):
        try:
            with open(os.path.join(d, ".netlat-vm-probe"), "w") as f:
                f.write("x")
            result(f"writable {d}", True)
        except OSError as e:
            result(f"writable {d}", False, str(e))
    mounts = Path("/proc/mounts").read_text()
    for mp in ("/sys/kernel/tracing", "/sys/fs/bpf", "/sys/kernel/debug", "/dev/pts"):
        result(f"mounted {mp}", f" {mp} " in mounts)
    lo = Path("/sys/class/net/lo/operstate").read_text().strip()
    result("lo up", lo in ("unknown", "up"), lo)
    builds = [p for p in glob.glob("/lib/modules/*/build") if os.path.exists(p)]
    srcs = glob.glob("/usr/src/linux-headers-*")
    if headerless:
        result("headers hidden", not builds and not srcs, f"build={builds} src={srcs[:3]}")
    else:
        result("headers visible", bool(builds), f"build={builds}")


def check_tracepoints() -> None:
    have = []
    for tp in TRACEPOINTS:
        cat, name = tp.split(":")
        ok = os.path.isdir(f"/sys/kernel/tracing/events/{cat}/{name}")
        have.append(f"{tp}={'yes' if ok else 'no'}")
    print("SELFTEST info tracepoints: " + " ".join(have), flush=True)
    syms = set()
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                syms.add(parts[2])
    print(
        "SELFTEST info functions: " + " ".join(f"{s}={'yes' if s in syms else 'no'}" for s in FUNCTIONS),
        flush=True,
    )


def check_netns() -> None:
    cmds = [
        "ip netns add vmst-a",
        "ip netns add vmst-b",
        "ip link add vmst0 netns vmst-a type veth peer name vmst1 netns vmst-b",
        "ip -n vmst-a addr add 10.203.0.1/24 dev vmst0",
        "ip -n vmst-b addr add 10.203.0.2/24 dev vmst1",
        "ip -n vmst-a link set vmst0 up",
        "ip -n vmst-b link set vmst1 up",
        "ip -n vmst-a link set lo up",
        "ip -n vmst-b link set lo up",
    ]
    for c in cmds:
        r = sh(c)
        if r.returncode != 0:
            result("netns + veth", False, f"{c}: {r.stderr.strip()}")
            return
    r = sh("ip netns exec vmst-a ping -c 3 -i 0.2 -W 2 10.203.0.2")
    last = [ln for ln in r.stdout.splitlines() if "packets transmitted" in ln]
    result("netns + veth ping", r.returncode == 0, (last[0] if last else r.stderr.strip()))
    sh("ip netns del vmst-a; ip netns del vmst-b")


BPF_TEXT = r"""
struct sk_buff;
struct net_device;
struct packet_type;

BPF_ARRAY(counts, u64, 2);

int kprobe__ip_rcv(struct pt_regs *ctx)
{
    int k = 0;
    u64 *v = counts.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}

KFUNC_PROBE(ip_rcv, struct sk_buff *skb, struct net_device *dev, struct packet_type *pt,
            struct net_device *orig_dev)
{
    int k = 1;
    u64 *v = counts.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""


def check_bcc(n: int) -> None:
    t0 = time.monotonic()
    try:
        from bcc import BPF
    except ImportError as e:
        result("bcc import", False, str(e))
        return
    print(f"SELFTEST info BPF.support_kfunc()={BPF.support_kfunc()}", flush=True)
    try:
        b = BPF(text=BPF_TEXT)
    except Exception as e:  # noqa: BLE001 - report any compile/load/attach failure
        result("bcc kprobe + kfunc on ip_rcv", False, f"{type(e).__name__}: {e}")
        return
    t_load = time.monotonic() - t0
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        tx.sendto(b"netlat-%d" % i, rx.getsockname())
    rx.settimeout(2)
    got = 0
    try:
        while got < n:
            rx.recv(64)
            got += 1
    except TimeoutError:
        pass
    counts = b["counts"]
    kp, kf = counts[0].value, counts[1].value
    b.cleanup()
    ok = kp >= n and kf >= n and got == n
    result(
        "bcc kprobe + kfunc on ip_rcv",
        ok,
        f"sent {n} UDP datagrams on lo, received {got}, kprobe {kp}, kfunc {kf} "
        f"(compile+load+attach {t_load:.1f}s, total {time.monotonic() - t0:.1f}s)",
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--no-bcc", action="store_true", help="skip the BCC probe check")
    p.add_argument("--headerless", action="store_true", help="expect kernel headers to be hidden")
    p.add_argument("--packets", type=int, default=100)
    args = p.parse_args()
    t0 = time.monotonic()
    check_env(args.headerless)
    check_tracepoints()
    check_netns()
    if not args.no_bcc:
        check_bcc(args.packets)
    print(
        f"SELFTEST done in {time.monotonic() - t0:.1f}s, {len(failures)} failed"
        + (f": {', '.join(failures)}" if failures else ""),
        flush=True,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
