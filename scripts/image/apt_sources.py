#!/usr/bin/env python3
"""The Debian mirror this machine's apt uses, for debootstrap and for the image's own apt.

An image build must fetch its packages where the machine does (a local mirror, a proxy),
so no mirror is written anywhere in the project: it is read from apt's configuration,
one-line ``.list`` files and deb822 ``.sources`` files alike, in the order apt reads them.

    apt_sources.py mirror SUITE    the first archive URI serving SUITE (for debootstrap)
    apt_sources.py sources SUITE   a deb822 file for the image: every archive of the host
                                   serving SUITE, SUITE-updates or SUITE-security (main)

``DEBIAN_MIRROR`` (and ``DEBIAN_SECURITY_MIRROR``), when set, replace what apt says.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

APT_ETC = Path(os.environ.get("APT_ETC", "/etc/apt"))
# What debian:12-slim's own debian.sources trusts: the keyring every Debian root has.
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class Source:
    """One ``deb`` line, or one URI × suite of a deb822 stanza."""

    uri: str
    suite: str
    components: tuple[str, ...]


def source_files(etc: Path = APT_ETC) -> list[Path]:
    """The files apt reads: sources.list, then sources.list.d/*.list and *.sources by name."""
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    return files


def parse_one_line(text: str) -> list[Source]:
    """``deb [options] URI SUITE COMPONENT...`` lines; deb-src and comments are skipped."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            out.append(Source(line[1].rstrip("/"), line[2], tuple(line[3:])))
    return out


def deb822_stanzas(text: str) -> list[dict[str, str]]:
    """RFC 822-style stanzas (blank-line separated, continuation lines folded, # comments)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif raw[0] in " \t" and key:
            current[key] += "\n" + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


def parse_deb822(text: str) -> list[Source]:
    """Enabled ``Types: deb`` stanzas, one Source per URI and suite."""
    out = []
    for s in deb822_stanzas(text):
        if "deb" not in s.get("types", "").split() or s.get("enabled", "yes").lower() == "no":
            continue
        components = tuple(s.get("components", "").split())
        for uri in s.get("uris", "").split():
            out.extend(Source(uri.rstrip("/"), suite, components) for suite in s.get("suites", "").split())
    return out


def host_sources(etc: Path = APT_ETC) -> list[Source]:
    """Every binary-package source of this machine, in apt's reading order."""
    out: list[Source] = []
    for f in source_files(etc):
        text = f.read_text(errors="replace")
        out += parse_deb822(text) if f.suffix == ".sources" else parse_one_line(text)
    return out


def archives(suite: str, etc: Path = APT_ETC) -> dict[str, list[str]]:
    """Suite → URIs serving its main component: SUITE, SUITE-updates, SUITE-security."""
    wanted = {suite: [], f"{suite}-updates": [], f"{suite}-security": []}
    override = {suite: "DEBIAN_MIRROR", f"{suite}-updates": "DEBIAN_MIRROR"}
    override[f"{suite}-security"] = "DEBIAN_SECURITY_MIRROR"
    for s in host_sources(etc):
        if s.suite in wanted and "main" in s.components and s.uri not in wanted[s.suite]:
            wanted[s.suite].append(s.uri)
    for name, var in override.items():
        if os.environ.get(var):
            wanted[name] = [os.environ[var].rstrip("/")]
    return wanted


def mirror(suite: str, etc: Path = APT_ETC) -> str:
    """The URI debootstrap should use for ``suite``; exits with the reason when there is none."""
    found = archives(suite, etc)[suite]
    if not found:
        files = ", ".join(str(f) for f in source_files(etc)) or f"nothing under {etc}"
        sys.exit(
            f"apt_sources: no apt source serves Debian '{suite}' main (read: {files}); "
            "set DEBIAN_MIRROR=URL to name a Debian mirror"
        )
    return found[0]


def sources_file(suite: str, etc: Path = APT_ETC) -> str:
    """deb822 text for the image's /etc/apt/sources.list.d/debian.sources."""
    mirror(suite, etc)  # fails with the reason when the main suite is missing
    stanzas = []
    by_uris: dict[tuple[str, ...], list[str]] = {}
    for name, uris in archives(suite, etc).items():
        if uris:
            by_uris.setdefault(tuple(uris), []).append(name)
    for uris, suites in by_uris.items():
        stanzas.append(
            f"Types: deb\nURIs: {' '.join(uris)}\nSuites: {' '.join(suites)}\n"
            f"Components: main\nSigned-By: {KEYRING}\n"
        )
    return "\n".join(stanzas)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("mirror", "sources"):
        print(f"usage: {argv[0]} mirror|sources SUITE", file=sys.stderr)
        return 2
    print(mirror(argv[2]) if argv[1] == "mirror" else sources_file(argv[2]), end="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
