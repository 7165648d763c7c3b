"""Two test hosts on one machine: network namespaces joined by a veth pair.

Traffic stays inside namespaces this fixture makes (private addresses that exist nowhere
else). Static neighbour entries keep ARP/NDP out of the counts. Sockets are created
*inside* a namespace by switching this thread's namespace with setns(2) for the moment of
``socket()``; a socket keeps its namespace, so one test process drives both hosts in
lockstep without helper processes.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.support.wait import poll_until

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its stderr (tests fail loudly, never skip)."""
    proc = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Switch this thread into namespace ``name`` for the duration of the block."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def socket_in(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ``ns``."""
    with in_netns(ns):
        return socket.socket(family, kind, proto)


@dataclass
class VethPair:
    """Namespace ``a`` (sender side, device ``dev_a``) ↔ namespace ``b`` (``dev_b``)."""

    a: str
    b: str
    dev_a: str
    dev_b: str
    a4: str
    b4: str
    a6: str
    b6: str

    @property
    def netns_inodes(self) -> tuple[int, int]:
        return (os.stat(f"/run/netns/{self.a}").st_ino, os.stat(f"/run/netns/{self.b}").st_ino)

    def ip(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", ns, *args)

    def set_gro(self, ns: str, dev: str, on: bool) -> None:
        """GRO on a veth makes it deliver through NAPI (no backlog, batched receive).

        veth only takes the NAPI path for a UDP skb when the receiver also accepts UDP GRO
        forwarding (veth_skb_is_eligible_for_gro), so both flags go together.
        """
        state = "on" if on else "off"
        sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", state, "rx-udp-gro-forwarding", state)

    def set_rps(self, ns: str, dev: str, cpumask: str) -> None:
        """Steer the device's first receive queue to the CPUs in ``cpumask`` (hex; "0": off).

        sysfs shows the namespace's own devices only inside it (``ip netns exec`` remounts it).
        """
        path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
        sh("ip", "netns", "exec", ns, "sh", "-c", f"echo {cpumask} > {path}")

    def quiet_ipv4(self) -> None:
        """Device a sends IPv4 only, its neighbour resolved: no IPv6 solicitation or report and
        no ARP exchange lands in a measured queue (and its exact counts) during a test."""
        sh("ip", "netns", "exec", self.a, "sysctl", "-qw", f"net.ipv6.conf.{self.dev_a}.disable_ipv6=1")
        sh("ip", "netns", "exec", self.a, "ping", "-c1", "-W2", "-q", self.b4)

    def add_tbf(self, ns: str, dev: str, rate: str = "1mbit") -> None:
        sh(
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "1600",
            "latency",
            "2s",
        )

    def set_pfifo(self, ns: str, dev: str) -> None:
        """A plain FIFO qdisc (built in): packets queue, unshaped."""
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "pfifo")

    def set_noqueue(self, ns: str, dev: str) -> None:
        """The veth default: no qdisc queues (``noqueue``)."""
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "noqueue")

    def del_qdisc(self, ns: str, dev: str) -> None:
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)


def make_veth_pair(again: VethPair | None = None) -> VethPair:
    """A new pair of namespaces and devices, or ``again``'s (same names and addresses) made
    anew after it was removed: a recreated namespace or device has a new inode or index."""
    tag = secrets.token_hex(3)
    octet = int(tag[:2], 16) % 250 + 1
    pair = again or VethPair(
        a=f"nl-a-{tag}",
        b=f"nl-b-{tag}",
        dev_a="nlva",
        dev_b="nlvb",
        a4=f"10.213.{octet}.1",
        b4=f"10.213.{octet}.2",
        a6=f"fd00:213:{octet:x}::1",
        b6=f"fd00:213:{octet:x}::2",
    )
    sh("ip", "netns", "add", pair.a)
    sh("ip", "netns", "add", pair.b)
    try:
        link_veth(pair)
    except Exception:
        remove_veth_pair(pair)
        raise
    return pair


def link_veth(pair: VethPair) -> None:
    """The veth between the pair's two (existing) namespaces, addressed, with static neighbours."""
    sh(
        "ip",
        "-n",
        pair.a,
        "link",
        "add",
        pair.dev_a,
        "type",
        "veth",
        "peer",
        "name",
        pair.dev_b,
        "netns",
        pair.b,
    )
    address_pair(pair)
    for ns, dev in ((pair.a, pair.dev_a), (pair.b, pair.dev_b)):
        pair.set_gro(ns, dev, False)
        # A queueing qdisc, so the qdisc stage has something to measure (a veth is noqueue
        # by default, and noqueue transmits are counted as skipped, not sampled).
        pair.set_pfifo(ns, dev)


def address_pair(pair: VethPair) -> None:
    """Both ends of a pair (its devices already in their namespaces) addressed and up, with
    static neighbours: no ARP/NDP packets in the counts."""
    mac = {}
    for ns, dev, v4, v6 in (
        (pair.a, pair.dev_a, pair.a4, pair.a6),
        (pair.b, pair.dev_b, pair.b4, pair.b6),
    ):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        sh("ip", "-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        sh("ip", "-n", ns, "link", "set", dev, "up")
        mac[ns] = open_text(ns, f"/sys/class/net/{dev}/address")
    for ns, dev, peer_ns, p4, p6 in (
        (pair.a, pair.dev_a, pair.b, pair.b4, pair.b6),
        (pair.b, pair.dev_b, pair.a, pair.a4, pair.a6),
    ):
        sh("ip", "-n", ns, "neigh", "replace", p4, "lladdr", mac[peer_ns], "dev", dev, "nud", "permanent")
        sh(
            "ip",
            "-n",
            ns,
            "-6",
            "neigh",
            "replace",
            p6,
            "lladdr",
            mac[peer_ns],
            "dev",
            dev,
            "nud",
            "permanent",
        )


def open_text(ns: str, path: str) -> str:
    """Read a sysfs file as seen from inside a namespace."""
    return sh("ip", "netns", "exec", ns, "cat", path).stdout.strip()


def remove_veth_pair(pair: VethPair) -> None:
    sh("ip", "netns", "del", pair.a, check=False)
    sh("ip", "netns", "del", pair.b, check=False)


@pytest.fixture
def veth_pair(require_root) -> Iterator[VethPair]:
    """A fresh pair of namespaces joined by veth, removed afterwards."""
    pair = make_veth_pair()
    try:
        yield pair
    finally:
        remove_veth_pair(pair)


@pytest.fixture(scope="session")
def require_root() -> None:
    """Kernel tests need root (BPF, namespaces): fail loudly, never skip."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (BPF programs, network namespaces); run `make test` as root")


def _udp_pair(pair: VethPair, family: int) -> tuple[socket.socket, socket.socket, tuple]:
    dst = pair.b4 if family == socket.AF_INET else pair.b6
    rx = socket_in(pair.b, family, socket.SOCK_DGRAM)
    tx = socket_in(pair.a, family, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind((dst, 0))
    rx.settimeout(5.0)
    return rx, tx, rx.getsockname()


def udp_burst_then_read(pair: VethPair, n: int, delay_s: float, family: int = socket.AF_INET) -> list[float]:
    """``n`` datagrams sent at once, read after ``delay_s``: each one's wait, by the test's clock."""
    rx, tx, addr = _udp_pair(pair, family)
    sent: dict[int, float] = {}
    waits = []
    with rx, tx:
        for i in range(n):
            sent[i] = time.monotonic()
            tx.sendto(i.to_bytes(4, "big") + b"x" * 60, addr)
        time.sleep(delay_s)  # the injected delay: nothing reads for delay_s
        for _ in range(n):
            data = rx.recv(2048)
            waits.append(time.monotonic() - sent[int.from_bytes(data[:4], "big")])
    return waits


def udp_lockstep(pair: VethPair, n: int, family: int = socket.AF_INET, size: int = 64) -> int:
    """Send ``n`` datagrams a → b, each read before the next is sent. Returns datagrams read."""
    dst = pair.b4 if family == socket.AF_INET else pair.b6
    rx = socket_in(pair.b, family, socket.SOCK_DGRAM)
    tx = socket_in(pair.a, family, socket.SOCK_DGRAM)
    rx.settimeout(2.0)
    with rx, tx:
        rx.bind((dst, 0))
        port = rx.getsockname()[1]
        got = 0
        payload = b"n" * size
        for _ in range(n):
            tx.sendto(payload, (dst, port))
            rx.recv(65535)
            got += 1
        return got


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


# recvmmsg(2)'s number, as /proc/<pid>/task/<tid>/syscall shows it.
RECVMMSG_NR = {"x86_64": 299, "aarch64": 243}.get(os.uname().machine)


def wait_blocked_in(thread: threading.Thread, nr: int | None, name: str, timeout: float = 5.0) -> None:
    """Until ``thread`` sits blocked inside system call ``nr`` (the kernel's word, not a guess)."""
    if nr is None:
        raise AssertionError(f"the number of {name}(2) on {os.uname().machine} is not known here")
    path = f"/proc/self/task/{thread.native_id}/syscall"

    def blocked() -> bool:
        with open(path) as f:
            return f.read().split(" ", 1)[0] == str(nr)

    poll_until(blocked, timeout, f"the reader to block in {name}", every=0.005)


def udp_recvmmsg_paced(pair: VethPair, n: int, family: int = socket.AF_INET, gap_s: float = 0.002) -> int:
    """One recvmmsg(2) call for ``n`` datagrams, sent a → b one by one while it waits.

    Each datagram arrives while the reader is blocked inside recvmmsg, so each is read by its
    own pass through the protocol's recvmsg: the first by sock_recvmsg, the others by
    sock_recvmsg_nosec. Returns the datagrams recvmmsg reported.
    """
    dst = pair.b4 if family == socket.AF_INET else pair.b6
    rx = socket_in(pair.b, family, socket.SOCK_DGRAM)
    tx = socket_in(pair.a, family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((dst, 0))
        port = rx.getsockname()[1]
        bufs = [ctypes.create_string_buffer(2048) for _ in range(n)]
        iovs = (_Iovec * n)(*[_Iovec(ctypes.cast(b, ctypes.c_void_p), 2048) for b in bufs])
        msgs = (_Mmsghdr * n)()
        for i in range(n):
            msgs[i].hdr.iov = ctypes.pointer(iovs[i])
            msgs[i].hdr.iovlen = 1
        result: list[int] = []

        def read() -> None:
            result.append(_libc.recvmmsg(rx.fileno(), msgs, n, 0, None))

        reader = threading.Thread(target=read)
        reader.start()
        wait_blocked_in(reader, RECVMMSG_NR, "recvmmsg")  # before the first datagram is sent
        for _ in range(n):
            tx.sendto(b"m" * 64, (dst, port))
            time.sleep(gap_s)
        reader.join(10)
        assert not reader.is_alive(), "recvmmsg did not return"
        if result[0] < 0:
            raise OSError(ctypes.get_errno(), "recvmmsg failed")
        return result[0]


@contextmanager
def tcp_connection(pair: VethPair, nodelay: bool = True) -> Iterator[tuple[socket.socket, socket.socket]]:
    """One TCP connection a → b over IPv4: ``(client, server end)``, both closed on exit.
    ``nodelay``: every send its own segment (no Nagle coalescing in the sender)."""
    srv = socket_in(pair.b, socket.AF_INET, socket.SOCK_STREAM)
    cli = socket_in(pair.a, socket.AF_INET, socket.SOCK_STREAM)
    with srv, cli:
        srv.bind((pair.b4, 0))
        srv.listen(1)
        if nodelay:
            cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cli.connect(srv.getsockname())
        conn, _ = srv.accept()
        with conn:
            yield cli, conn


def udp_read_after(pair: VethPair, n: int, delay_s: float) -> tuple[tuple[str, int], tuple[str, int]]:
    """``n`` IPv4 datagrams a → b that nobody reads for ``delay_s`` (the injected delay), then
    read. Returns the flow's (source, destination) as (address, port) pairs."""
    rx = socket_in(pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket_in(pair.a, socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((pair.b4, 0))
        tx.bind((pair.a4, 0))
        rx.settimeout(5)
        for i in range(n):
            tx.sendto(i.to_bytes(4, "big") + b"x" * 60, rx.getsockname())
        time.sleep(delay_s)  # the injected delay: nobody reads
        for _ in range(n):
            rx.recv(2048)
        return tx.getsockname(), rx.getsockname()


def udp_to_closed_port(pair: VethPair, n: int, family: int = socket.AF_INET) -> None:
    """Send ``n`` datagrams to a port nobody listens on in b (each dropped: NO_SOCKET)."""
    dst = pair.b4 if family == socket.AF_INET else pair.b6
    tx = socket_in(pair.a, family, socket.SOCK_DGRAM)
    with tx:
        for _ in range(n):
            tx.sendto(b"closed", (dst, 9))


def udp_burst(pair: VethPair, n: int, size: int = 1000) -> int:
    """Send ``n`` datagrams a → b as fast as possible, then read what arrived."""
    rx = socket_in(pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket_in(pair.a, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.settimeout(5.0)
    with rx, tx:
        rx.bind((pair.b4, 0))
        port = rx.getsockname()[1]
        for _ in range(n):
            tx.sendto(b"b" * size, (pair.b4, port))
        got = 0
        try:
            while got < n:
                rx.recv(65535)
                got += 1
        except TimeoutError:
            pass
        return got


def icmp_echo(pair: VethPair, n: int) -> int:
    """``n`` ICMP echo requests a → b over a raw socket; returns replies seen."""
    import struct

    def checksum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        s = sum(struct.unpack(f"!{len(data) // 2}H", data))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        return ~s & 0xFFFF

    sock = socket_in(pair.a, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(2.0)
    replies = 0
    with sock:
        for seq in range(n):
            hdr = struct.pack("!BBHHH", 8, 0, 0, 0x4E4C, seq)
            payload = b"otel-netlat"
            pkt = struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), 0x4E4C, seq) + payload
            sock.sendto(pkt, (pair.b4, 0))
            while True:
                data = sock.recv(2048)
                ihl = (data[0] & 0xF) * 4
                if data[ihl] == 0 and struct.unpack("!H", data[ihl + 6 : ihl + 8])[0] == seq:
                    replies += 1
                    break
    return replies


def tcp_transfer(pair: VethPair, nbytes: int) -> int:
    """Send ``nbytes`` over one TCP connection a → b; returns bytes received."""
    import threading

    srv = socket_in(pair.b, socket.AF_INET, socket.SOCK_STREAM)
    cli = socket_in(pair.a, socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((pair.b4, 0))
    srv.listen(1)
    received = 0

    def serve() -> None:
        nonlocal received
        conn, _ = srv.accept()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                received += len(data)

    t = threading.Thread(target=serve)
    t.start()
    with cli:
        cli.connect(srv.getsockname())
        cli.sendall(b"t" * nbytes)
    t.join(10)
    srv.close()
    return received
