"""Namespace and interface names → the numbers the kernel compares (netns inode, ifindex).

The filters (--netns, --interface) are given as names; the kernel sees ``net->ns.inum`` and
``dev->ifindex``. Both change when a namespace or interface is deleted and created again,
so these are asked at start-up (kernel.features) and again while the agent runs
(collect.filters). An interface index is per namespace: it is asked from inside the target
namespace by a short-lived thread that enters it with setns(2) — a network namespace is a
per-thread attribute, so the rest of the process never moves, and no subprocess is forked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading

from otel_netlat.config.settings import NETNS_DIR

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name_or_path: str) -> str:
    """A bare name is the bind mount ``ip netns`` makes; an absolute path is used as given."""
    return name_or_path if name_or_path.startswith("/") else f"{NETNS_DIR}/{name_or_path}"


def netns_inode(name_or_path: str) -> int | str:
    """The namespace inode the kernel reports as net->ns.inum, or why it was not found."""
    path = netns_path(name_or_path)
    try:
        return os.stat(path).st_ino
    except OSError as e:
        return f"network namespace {name_or_path!r} not found ({path}: {e.strerror})"


def ifindex_of(name: str, netns: str | None) -> int | str:
    """An interface's index, inside ``netns`` when given (indexes are per namespace), or why not."""
    if netns is None:
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return f"interface {name!r} not found in this network namespace"
    result: list[int | str] = [f"interface {name!r} not found in network namespace {netns!r}"]

    def look() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
        except OSError as e:
            result[0] = f"network namespace {netns!r} not found ({netns_path(netns)}: {e.strerror})"
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                result[0] = f"cannot enter network namespace {netns!r}: {os.strerror(ctypes.get_errno())}"
                return
        finally:
            os.close(fd)
        # This thread now lives in ``netns`` until it ends; nothing else runs on it.
        with contextlib.suppress(OSError):
            result[0] = socket.if_nametoindex(name)

    thread = threading.Thread(target=look, name="netlat-ifindex", daemon=True)
    thread.start()
    thread.join()
    return result[0]


def ifindexes(name: str, netns: tuple[str, ...]) -> tuple[int, ...] | str:
    """The interface's index in each of ``netns`` (in ours when none), or the first failure."""
    found: list[int] = []
    for ns in netns or (None,):
        index = ifindex_of(name, ns)
        if isinstance(index, str):
            return index
        found.append(index)
    return tuple(found)
