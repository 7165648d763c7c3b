"""UDP load for the benchmark: a sender and a receiver, each its own long-lived process.

Run as ``ip netns exec NS python -m bench.load send|recv SHM ...``. Both stay up for the
whole benchmark and talk to the orchestrator through a small shared-memory file (words of
:data:`Word`), so a measuring window costs no process start-up and every run of a round
sees identical processes: the orchestrator raises ``RUN``, waits, lowers it, and reads the
counters. ``sendmmsg`` / ``recvmmsg`` through ctypes spread Python's per-call cost over a
batch, so at saturation the kernel, not the interpreter, is the bottleneck. Stdlib only.

Bounded: the sender only sends while ``RUN`` is up and never longer than ``MAX_BURST_S``
at a stretch; both exit when ``STOP`` is set, when their parent dies (PR_SET_PDEATHSIG)
or after ``MAX_LIFE_S``.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import mmap
import signal
import socket
import struct
import sys
import time
from enum import IntEnum

_libc = ct.CDLL(None, use_errno=True)
MSG_WAITFORONE = 0x10000
PR_SET_PDEATHSIG = 1
MAX_BURST_S = 120.0
MAX_LIFE_S = 1800.0
SHM_SIZE = 4096


class Word(IntEnum):
    """u64 slots of the shared file. The orchestrator writes RUN, PPS, PORT and STOP."""

    RUN = 0  # 1: send now
    PPS = 1  # datagrams/s while running, 0: as fast as possible
    PORT = 2  # destination port (the receiver's, or a closed one)
    STOP = 3  # 1: exit
    SENT = 4  # datagrams sent (sender)
    RECEIVED = 5  # datagrams received (receiver)
    RECV_PORT = 6  # port the receiver is bound to (receiver, once ready)


class Shared:
    """The shared words, mapped from a file (``/dev/shm``)."""

    def __init__(self, path: str, create: bool = False) -> None:
        mode = "w+b" if create else "r+b"
        self._f = open(path, mode)  # noqa: SIM115 — lives as long as the process
        if create:
            self._f.write(b"\0" * SHM_SIZE)
            self._f.flush()
        self._mm = mmap.mmap(self._f.fileno(), SHM_SIZE)

    def __getitem__(self, w: Word) -> int:
        return struct.unpack_from("Q", self._mm, w * 8)[0]

    def __setitem__(self, w: Word, value: int) -> None:
        struct.pack_into("Q", self._mm, w * 8, value)

    def close(self) -> None:
        self._mm.close()
        self._f.close()


class IoVec(ct.Structure):
    _fields_ = [("base", ct.c_void_p), ("len", ct.c_size_t)]


class MsgHdr(ct.Structure):
    _fields_ = [
        ("name", ct.c_void_p),
        ("namelen", ct.c_uint32),
        ("iov", ct.POINTER(IoVec)),
        ("iovlen", ct.c_size_t),
        ("control", ct.c_void_p),
        ("controllen", ct.c_size_t),
        ("flags", ct.c_int),
    ]


class MMsgHdr(ct.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ct.c_uint)]


def _batch(n: int, size: int) -> tuple[ct.Array, list]:
    """``n`` message headers, each with its own ``size``-byte buffer (kept alive by the caller)."""
    bufs = [ct.create_string_buffer(b"n" * size, size) for _ in range(n)]
    iovs = (IoVec * n)()
    msgs = (MMsgHdr * n)()
    for i in range(n):
        iovs[i].base = ct.cast(bufs[i], ct.c_void_p)
        iovs[i].len = size
        msgs[i].hdr.iov = ct.pointer(iovs[i])
        msgs[i].hdr.iovlen = 1
    return msgs, [bufs, iovs]


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def send(shm: Shared, dst: str, size: int, batch: int, max_life: float = MAX_LIFE_S) -> None:
    """Send while RUN is up: saturating, or paced to PPS (in batches of ≤ 0.5 ms)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    msgs, keep = _batch(batch, size)
    fd = sock.fileno()
    port = 0
    sent = 0
    born = time.monotonic()
    while not shm[Word.STOP] and time.monotonic() - born < max_life:
        if not shm[Word.RUN]:
            time.sleep(0.001)
            continue
        if shm[Word.PORT] != port:
            port = shm[Word.PORT]
            sock.connect((dst, port))
        pps = shm[Word.PPS]
        n = max(1, min(batch, pps // 2000)) if pps else batch
        t0 = time.monotonic()
        start = sent
        while shm[Word.RUN] and time.monotonic() - t0 < MAX_BURST_S:
            got = _libc.sendmmsg(fd, msgs, n, 0)
            if got > 0:
                sent += got
                shm[Word.SENT] = sent
            if pps:
                ahead = (sent - start) / pps - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    del keep


def recv(shm: Shared, host: str, batch: int, max_life: float = MAX_LIFE_S) -> None:
    """Count every datagram that arrives, publishing the running total after each batch."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, 0))
    # SO_RCVTIMEO, not settimeout(): Python would make the fd non-blocking for recvmmsg.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))
    msgs, keep = _batch(batch, 2048)
    fd = sock.fileno()
    shm[Word.RECV_PORT] = sock.getsockname()[1]
    got = 0
    born = time.monotonic()
    while not shm[Word.STOP] and time.monotonic() - born < max_life:
        n = _libc.recvmmsg(fd, msgs, batch, MSG_WAITFORONE, None)
        if n > 0:
            got += n
            shm[Word.RECEIVED] = got
    del keep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.load")
    p.add_argument("role", choices=("send", "recv"))
    p.add_argument("shm")
    p.add_argument("addr", help="destination (send) or address to bind (recv)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-life", type=float, default=MAX_LIFE_S, help="seconds before exiting anyway")
    a = p.parse_args(argv)
    _die_with_parent()
    shm = Shared(a.shm)
    try:
        if a.role == "send":
            send(shm, a.addr, a.size, a.batch, a.max_life)
        else:
            recv(shm, a.addr, a.batch, a.max_life)
    finally:
        shm.close()
    print(json.dumps({"role": a.role, "exit": "ok"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
