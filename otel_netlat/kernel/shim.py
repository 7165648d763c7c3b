"""A tiny stand-in for kernel headers, so BCC compiles with none installed.

BCC looks for kernel headers in ``/lib/modules/$(uname -r)/build`` or ``BCC_KERNEL_SOURCE``
and fails without them. Its preamble only needs a handful of UAPI headers (types, byte
order) and a ``kconfig.h``: we copy those from ``linux-libc-dev`` under ``/usr/include`` and
stub the rest. Every kernel struct the BPF C reads is reached through offsets from BTF
(``otel_netlat.kernel.btf``), never through headers — Debian's headers for another kernel would
give wrong offsets silently.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

UAPI_ROOTS = (Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu"))

#: Headers BCC's preamble includes (directly or through its own bpf.h/helpers.h).
UAPI_HEADERS = (
    "linux/types.h",
    "asm/types.h",
    "linux/version.h",
    "linux/bpf_common.h",
    "asm/byteorder.h",
    "linux/swab.h",
    "uapi/linux/if_packet.h",
)

#: Headers BCC includes that must exist but whose content BCC already carries.
EMPTY_STUBS = ("uapi/linux/bpf.h", "linux/log2.h", "asm/page.h")

KCONFIG_H = """\
/* otel-netlat headerless shim: the few kernel definitions BCC's preamble expects. */
#ifndef __NETLAT_SHIM_KCONFIG_H
#define __NETLAT_SHIM_KCONFIG_H
#define CONFIG_BPF_SYSCALL 1
#define PAGE_SIZE 4096
#ifndef NULL
#define NULL ((void *)0)
#endif
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;
typedef _Bool bool;
#define true 1
#define false 0
typedef unsigned long size_t;
typedef long ssize_t;
typedef unsigned long uintptr_t;
#endif
"""

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)


class ShimError(Exception):
    """The UAPI headers needed for the shim are missing."""


@dataclass(frozen=True)
class Shim:
    """A built shim: point ``BCC_KERNEL_SOURCE`` at ``kernel_source`` and add ``cflags``."""

    root: Path

    @property
    def kernel_source(self) -> Path:
        return self.root / "kernel"

    @property
    def include_dir(self) -> Path:
        return self.root / "include"

    @property
    def cflags(self) -> list[str]:
        return [f"-I{self.include_dir}"]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _find_uapi(name: str) -> Path | None:
    # BCC spells some includes as the kernel tree does ("uapi/linux/x.h"); /usr/include has "linux/x.h".
    name = name.removeprefix("uapi/")
    for root in UAPI_ROOTS:
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _copy_with_includes(name: str, dest: Path, seen: set[str]) -> None:
    """Copy a UAPI header and, recursively, every header it includes."""
    if name in seen:
        return
    seen.add(name)
    src = _find_uapi(name)
    if src is None:
        raise ShimError(f"UAPI header <{name}> not found under /usr/include: install Debian's linux-libc-dev")
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    text = src.read_text()
    target.write_text(text)
    for included in _INCLUDE_RE.findall(text):
        _copy_with_includes(included, dest, seen)


def build_shim(extra_headers: dict[str, str] | None = None, parent: str | None = None) -> Shim:
    """Write the shim into a fresh temporary folder and return it.

    ``extra_headers`` maps a header path (relative to the include dir) to its text: the
    kernel types written out from BTF (``enum skb_drop_reason``, ``struct pt_regs``).
    """
    root = Path(tempfile.mkdtemp(prefix="otel-netlat-shim-", dir=parent))
    shim = Shim(root)
    kconfig = shim.kernel_source / "include" / "linux" / "kconfig.h"
    kconfig.parent.mkdir(parents=True)
    kconfig.write_text(KCONFIG_H)
    seen: set[str] = set()
    for header in UAPI_HEADERS:
        _copy_with_includes(header, shim.include_dir, seen)
    for stub in EMPTY_STUBS:
        path = shim.include_dir / stub
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("/* stub: BCC carries its own definitions */\n")
    for rel, text in (extra_headers or {}).items():
        path = shim.include_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return shim
