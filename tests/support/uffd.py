"""Hold a TCP socket's lock for a known time, with userfaultfd.

A reader blocked in ``recv`` holds its socket's lock while the kernel copies data into its
buffer. When that buffer's second page is registered with userfaultfd, the copy faults and
waits for this process to resolve the fault: meanwhile the socket stays owned, and every
segment that arrives goes to the socket's backlog until ``release_sock``. The hold is as
long as the test says, to the millisecond, with no timing guess.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import platform
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

PAGE = mmap.PAGESIZE
#: userfaultfd(2) by architecture (the syscall has no libc wrapper on Debian 12).
SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
UFFDIO_ZEROPAGE = 0xC020AA04  # _IOWR(0xAA, 0x04, struct uffdio_zeropage)
UFFD_API = 0xAA
UFFDIO_REGISTER_MODE_MISSING = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _userfaultfd(addr: int, length: int) -> int:
    """A userfaultfd that traps the first touch of [addr, addr + length)."""
    fd = _libc.syscall(SYS_USERFAULTFD[platform.machine()], os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"userfaultfd: {os.strerror(err)}")
    fcntl.ioctl(fd, UFFDIO_API, bytearray(struct.pack("QQQ", UFFD_API, 0, 0)))
    register = struct.pack("QQQQ", addr, length, UFFDIO_REGISTER_MODE_MISSING, 0)
    fcntl.ioctl(fd, UFFDIO_REGISTER, bytearray(register))
    return fd


@dataclass
class LockHold:
    """When the socket's lock was taken hold of (the fault) and let go (the fault resolved)."""

    held: threading.Event = field(default_factory=threading.Event)
    released_at: float = 0.0
    received: int = 0


@contextlib.contextmanager
def socket_lock_held(conn: socket.socket, hold_s: float, first: int) -> Iterator[LockHold]:
    """While the body runs, ``conn``'s reader copies into a trapped page and keeps the socket
    locked until ``hold_s`` after the fault. The body must send at least ``first`` bytes
    (``first`` < one page) to reach the trap, wait for ``hold.held``, then send what should
    arrive during the hold. On exit the reader has read a page plus ``first`` bytes."""
    buf = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # not shmem: faults reach uffd
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fd = _userfaultfd(base + PAGE, PAGE)
    hold = LockHold()

    def resolve() -> None:
        select.select([fd], [], [], 10.0)
        os.read(fd, 32)  # the fault's message
        hold.held.set()
        time.sleep(hold_s)  # the injected delay: the socket stays owned
        fcntl.ioctl(fd, UFFDIO_ZEROPAGE, bytearray(struct.pack("QQQq", base + PAGE, PAGE, 0, 0)))
        hold.released_at = time.monotonic()

    def read() -> None:
        view = memoryview(buf)
        hold.received = conn.recv_into(view, PAGE + first, socket.MSG_WAITALL)
        view.release()

    threads = [threading.Thread(target=resolve, daemon=True), threading.Thread(target=read, daemon=True)]
    for t in threads:
        t.start()
    try:
        yield hold
    finally:
        for t in threads:
            t.join(10.0 + hold_s)
        os.close(fd)
        with contextlib.suppress(BufferError):
            buf.close()


def tcp_behind_held_lock(pair, n: int = 3, hold_s: float = 0.05) -> None:
    """``n`` TCP segments a → b that arrive while the reader holds the socket lock (its copy
    faults on a trapped page for ``hold_s``): each waits in the socket backlog, one
    ``tcp_backlog`` sample apiece, on any machine."""
    from tests.support.netns import tcp_connection  # noqa: PLC0415 — netns imports nothing from here

    with tcp_connection(pair) as (cli, conn):
        # The reader takes a page plus everything sent, so it returns once all is in.
        with socket_lock_held(conn, hold_s, first=100 + n * 200) as hold:
            cli.send(b"a" * (PAGE + 100))  # reaches the trapped page: the copy faults
            if not hold.held.wait(5):
                raise AssertionError("the reader's copy never faulted")
            for _ in range(n):
                cli.send(b"b" * 200)
        rest = PAGE + 100 + n * 200 - hold.received
        conn.settimeout(5)
        while rest > 0:
            rest -= len(conn.recv(65536))
