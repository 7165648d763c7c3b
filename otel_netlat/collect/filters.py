"""Keeps the kernel's filter sets (bpf/filters.h) equal to what --netns / --interface name now.

A namespace or interface that is deleted and created again comes back with a new inode or
index. Each refresh re-resolves the configured names (a stat per namespace, an
if_nametoindex per interface and namespace, at most once per ``period_s``), warns once when
one disappears, says so when it is back, and rewrites the two small BPF hash maps: the
recreated namespace or interface is measured again from that refresh on, without a reload.
Packets of a vanished one are simply no longer seen; nothing here can fail the agent.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

from otel_netlat.config import Config
from otel_netlat.kernel.netns import ifindex_of, netns_inode
from otel_netlat.program.build import LoadedProgram

log = logging.getLogger("otel_netlat")


class FilterWatcher:
    """Re-resolves the filter names and updates the kernel's sets when they change."""

    def __init__(
        self,
        bpf: object,
        netns: tuple[str, ...],
        interfaces: tuple[str, ...],
        period_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bpf = bpf
        self._netns = netns
        self._interfaces = interfaces
        self._period = period_s
        self._clock = clock
        self._next = 0.0
        #: name → inode, and (interface, namespace) → index, as last seen (None: missing).
        self._ns_seen: dict[str, int | None] = {}
        self._if_seen: dict[tuple[str, str | None], int | None] = {}
        #: What the kernel maps hold now.
        self._ns_set: set[int] | None = None
        self._if_set: set[int] | None = None
        self.refresh(force=True, announce=False)

    def refresh(self, force: bool = False, announce: bool = True) -> None:
        """Resolve again (at most once per period unless ``force``) and update the kernel maps."""
        now = self._clock()
        if not force and now < self._next:
            return
        self._next = now + self._period
        inodes: set[int] = set()
        for name in self._netns:
            found = netns_inode(name)
            inode = found if isinstance(found, int) else None
            self._note(self._ns_seen, name, inode, f"network namespace {name!r}", "inode", announce)
            if inode is not None:
                inodes.add(inode)
        indexes: set[int] = set()
        for iface in self._interfaces:
            for ns in self._netns or (None,):
                found = ifindex_of(iface, ns)
                index = found if isinstance(found, int) else None
                where = f"interface {iface!r}" + (f" in network namespace {ns!r}" if ns else "")
                self._note(self._if_seen, (iface, ns), index, where, "index", announce)
                if index is not None:
                    indexes.add(index)
        if self._netns:
            self._ns_set = self._sync("filter_netns", self._ns_set, inodes)
        if self._interfaces:
            self._if_set = self._sync("filter_ifindex", self._if_set, indexes)

    @staticmethod
    def _note(seen: dict, key: object, value: int | None, what: str, unit: str, announce: bool) -> None:
        """Log a change of one name's resolution: once when it goes, once when it is back."""
        before = seen.get(key, value)
        seen[key] = value
        if not announce or before == value:
            return
        if value is None:
            log.warning(
                "%s is gone (%s %s): its packets are not measured until it exists again", what, unit, before
            )
        elif before is None:
            log.warning("%s is back (%s %s): measuring it again", what, unit, value)
        else:
            log.warning("%s was recreated (%s %s, was %s): measuring the new one", what, unit, value, before)

    def _sync(self, table: str, last: set[int] | None, want: set[int]) -> set[int] | None:
        """Make the kernel map hold exactly ``want`` (None: unknown, a failed update is
        retried at the next refresh)."""
        if last == want:
            return last
        try:
            m = self._bpf.get_table(table.encode())  # type: ignore[attr-defined]
            have = {k.value for k in m}
            for v in want - have:
                m[ctypes.c_uint32(v)] = ctypes.c_uint8(1)
            for v in have - want:
                del m[ctypes.c_uint32(v)]
        except Exception as e:  # BCC raises plain Exception and KeyError; retried next refresh
            log.warning("updating the %s filter set failed: %s", table, e)
            return None
        return set(want)


def filter_watcher(config: Config, program: LoadedProgram) -> FilterWatcher | None:
    """The watcher for ``config``'s filters, or None when nothing is filtered."""
    if not config.netns and not config.interfaces:
        return None
    return FilterWatcher(program.bpf, config.netns, config.interfaces)
