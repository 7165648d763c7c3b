"""Value parsers: one raw value (flag text, variable text or YAML value) to a checked setting.

Each takes the raw value and its :class:`~otel_netlat.config.errors.Src` and returns the
parsed value or raises :class:`~otel_netlat.config.errors.ConfigError`. ``Src.text`` says
whether strings are to be parsed (flags, variables) or are a YAML type mistake (see the
package docstring for the accepted spellings).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from functools import partial
from urllib.parse import urlsplit

from otel_netlat.config.errors import ConfigError, Src, fail, show, suggest, unknown

__all__ = [
    "MAX_BOUNDS",
    "MAX_INTERVAL_S",
    "MAX_START_SLOTS",
    "MIN_INTERVAL_S",
    "MIN_START_SLOTS",
    "OTLP_PROTOCOLS",
    "ListenAddress",
    "check_interface",
    "check_netns",
    "parse_bounds",
    "parse_boolean",
    "parse_choice",
    "parse_integer",
    "parse_listen",
    "parse_names",
    "parse_otlp_protocol",
    "parse_seconds",
    "parse_stages",
    "parse_start_slots",
    "parse_text",
    "parse_url",
]

OTLP_PROTOCOLS = ("grpc", "http/protobuf")
# Decimal limits so that comparisons are exact (0.05 is not a float boundary).
MIN_INTERVAL_S = Decimal("0.05")
MAX_INTERVAL_S = Decimal(3600)
# No packet waits an hour inside the kernel; the cap also keeps every bound float-exact in ns.
MAX_BOUND_S = Decimal(3600)
_ONE_NS = Decimal("1e-9")
MAX_BOUNDS = 64
MIN_START_SLOTS, MAX_START_SLOTS = 1024, 4194304


@dataclass(frozen=True)
class ListenAddress:
    """The Prometheus endpoint. ``host`` has no brackets; ``str()`` adds them back for IPv6."""

    host: str = "0.0.0.0"
    port: int = 2112

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- scalars


def parse_text(value: object, src: Src, what: str = "a string") -> str:
    """A string, as is: YAML numbers are not names."""
    if not isinstance(value, str):
        fail(src, f"expected {what}", value)
    return value


def _decimal(value: object, src: Src, what: str) -> Decimal:
    """A finite number, exactly: floats via their shortest repr, so YAML 1e-06 stays 1e-06."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        fail(src, f"expected {what}", value)
    try:
        if isinstance(value, int):  # whole: str() refuses ints over 4300 digits (YAML hex makes them)
            number = Decimal(value)
        else:
            number = Decimal(repr(value) if isinstance(value, float) else value.strip())
    except InvalidOperation:
        fail(src, f"expected {what}", value)
    if not number.is_finite():
        fail(src, f"expected {what}", value)
    return number


def parse_seconds(value: object, src: Src) -> float:
    """An interval in seconds, within the limits the collection loop is built for."""
    number = _decimal(value, src, "a number of seconds")
    if number <= 0:
        fail(src, "must be a positive number of seconds", value)
    if not MIN_INTERVAL_S <= number <= MAX_INTERVAL_S:
        fail(src, f"must be between {MIN_INTERVAL_S} and {MAX_INTERVAL_S} seconds", value)
    return float(number)


#: A slow-packet threshold: from 1 µs (every sample is over it) to an hour.
MIN_THRESHOLD_S, MAX_THRESHOLD_S = Decimal("0.000001"), Decimal(3600)


def parse_threshold(value: object, src: Src) -> float:
    """A latency threshold in seconds (--slow-threshold and each stage's override)."""
    number = _decimal(value, src, "a number of seconds")
    if not MIN_THRESHOLD_S <= number <= MAX_THRESHOLD_S:
        fail(src, f"must be between {MIN_THRESHOLD_S} and {MAX_THRESHOLD_S} seconds", value)
    return float(number)


def parse_stage_thresholds(value: object, src: Src) -> tuple[tuple[str, float], ...]:
    """YAML ``slow.stages``: a mapping of stage name → threshold in seconds (names are checked
    against the stages that run when the program is planned)."""
    if not isinstance(value, dict):
        fail(src, "expected a mapping of stage name to seconds (e.g. 'socket: 0.1')", value)
    out = []
    for name, seconds in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            fail(src, "expected a stage name (lower case, digits, '_')", name)
        out.append((name, parse_threshold(seconds, Src(f"{src.where}.{name}", src.text))))
    return tuple(sorted(out))


def parse_integer(value: object, src: Src, low: int, high: int | None = None, problem: str = "") -> int:
    """An integer in ``[low, high]``; text is parsed, a YAML string is refused with a hint."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        if not src.text:
            fail(src, "expected an integer, not a string", value, "write it without quotes")
        try:
            number = int(value)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            fail(src, "integer too large", value)
    if number is None:
        fail(src, "expected an integer", value)
    if number < low or (high is not None and number > high):
        default = f"must be an integer from {low} to {high}" if high is not None else f"must be >= {low}"
        fail(src, problem or default, value)
    return number


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_boolean(value: object, src: Src) -> bool:
    """A YAML boolean, or true/false/1/0/yes/no as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and (word := value.strip().lower()) in _TRUE + _FALSE:
        if src.text:
            return word in _TRUE
        fail(src, "expected a boolean, not a string", value, "write true or false without quotes")
    fail(src, "expected true or false" + (" (or 1/0/yes/no)" if src.text else ""), value)


def parse_choice(value: object, src: Src, choices: Sequence[str]) -> str:
    """One of ``choices``, case and surrounding blanks ignored; returned as spelled there."""
    word = value.strip().lower() if isinstance(value, str) else value
    if word in choices:
        return str(word)
    fail(src, f"expected one of {', '.join(choices)}", value, suggest(word, choices))


def parse_otlp_protocol(value: object, where: str) -> str:
    """The OTLP protocol (``grpc`` or ``http/protobuf``), case ignored.

    The one check of it: the exporter applies it to ``OTEL_EXPORTER_OTLP_*PROTOCOL`` too,
    so a flag and a variable accept the same words. ``where`` names the value's source.
    """
    return parse_choice(value, Src(where, True), OTLP_PROTOCOLS)


def parse_start_slots(value: object, src: Src) -> int:
    """The in-kernel start table size: a power of two, as the BPF side masks with it."""
    problem = f"must be a power of two from {MIN_START_SLOTS} to {MAX_START_SLOTS}"
    number = parse_integer(value, src, MIN_START_SLOTS, MAX_START_SLOTS, problem)
    if number & (number - 1):
        fail(src, problem, value)
    return number


# --------------------------------------------------------------------------- lists


def _items(value: object, src: Src) -> list[tuple[object, Src]]:
    """The items of a list setting, each with its own source (see the package docstring)."""
    if isinstance(value, str):
        if not value.strip():
            return []  # the caller says what the list needed
        parts = value.split(",")
        if any(not p.strip() for p in parts):
            fail(src, "empty item in a comma-separated list", value)
        return [(p.strip(), src) for p in parts]
    if not isinstance(value, list):
        fail(src, "expected a list or a comma-separated string", value)
    if src.text:  # a repeated flag: each occurrence may itself be a comma list
        return [item for occurrence in value for item in _items(occurrence, src)]
    return [(item, src.at(i)) for i, item in enumerate(value)]


def parse_names(value: object, src: Src, check: Callable[[str, Src], str], what: str) -> tuple[str, ...]:
    """A non-empty list of distinct strings, each validated by ``check``."""
    items = _items(value, src)
    if not items:
        fail(src, f"must name at least one {what}", value)
    names: list[str] = []
    for item, isrc in items:
        name = check(parse_text(item, isrc), isrc)
        if name in names:
            raise ConfigError(isrc.where, f"{what} {show(name)} is listed twice")
        names.append(name)
    return tuple(names)


def _stage(name: str, src: Src, known: Sequence[str]) -> str:
    if name not in known:
        unknown(src.where, "stage", name, known)
    return name


def parse_stages(value: object, src: Src, known: Sequence[str]) -> tuple[str, ...]:
    """Stage names, each one of ``known`` (the built-in and the custom stages)."""
    return parse_names(value, src, partial(_stage, known=known), "stage")


def _os_bytes(name: str) -> bytes | None:
    """``name`` as the kernel gets it (undecodable argv bytes included); None if it has no bytes."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a YAML "\ud800" escape
        return None


def check_interface(name: str, src: Src) -> str:
    """Linux's dev_valid_name: 1-15 bytes, not '.' or '..', no '/', ':' or whitespace."""
    encoded = _os_bytes(name)
    if (
        encoded is None
        or not 1 <= len(encoded) <= 15
        or name in (".", "..")
        or any(c in "/:" or c.isspace() for c in name)
    ):
        fail(src, "invalid interface name (1-15 bytes, no '/', ':' or whitespace, not '.' or '..')", name)
    return name


def check_netns(name: str, src: Src) -> str:
    """A name as ``ip netns`` accepts it, or an absolute path (existence is checked at start-up)."""
    encoded = _os_bytes(name)
    if name.startswith("/"):
        if "\0" in name or encoded is None:
            fail(src, "invalid network namespace path", name)
    elif "/" in name:
        fail(src, "a network namespace is a name or an absolute path (e.g. /proc/PID/ns/net)", name)
    elif (
        name in (".", "..")
        or encoded is None
        or len(encoded) > 255
        or any(c.isspace() or c == "\0" for c in name)
    ):
        fail(src, "invalid network namespace name (as in 'ip netns': no '/', whitespace, '.' or '..')", name)
    return name


def parse_bounds(value: object, src: Src) -> tuple[int, ...]:
    """Histogram bounds in seconds → exact integer nanoseconds (the kernel slots in ns)."""
    items = _items(value, src)
    if not 1 <= len(items) <= MAX_BOUNDS:
        fail(src, f"must list 1 to {MAX_BOUNDS} bucket bounds, not {len(items)}", value)
    bounds: list[int] = []
    previous: object = None
    for item, isrc in items:
        seconds = _decimal(item, isrc, "a bucket bound in seconds")
        if seconds <= 0 or seconds > MAX_BOUND_S:
            fail(isrc, f"bucket bounds must be positive seconds, at most {MAX_BOUND_S}", item)
        # scaleb only moves the exponent; enough precision makes it exact for any input of 1 ns
        # or more (far below, the default exponent range would round it to a whole 0).
        whole = seconds >= _ONE_NS
        ns = seconds.scaleb(9, Context(prec=len(seconds.as_tuple().digits) + 1)) if whole else seconds
        if not whole or ns != ns.to_integral_value():
            fail(isrc, "bucket bounds must be whole nanoseconds (multiples of 1e-9 s)", item)
        if bounds and int(ns) <= bounds[-1]:
            problem = f"bucket bounds must increase strictly, got {show(item)} after {show(previous)}"
            raise ConfigError(isrc.where, problem)
        bounds.append(int(ns))
        previous = item
    return tuple(bounds)


# --------------------------------------------------------------------------- addresses

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def parse_listen(value: object, src: Src) -> ListenAddress:
    """``HOST:PORT`` or ``[IPV6]:PORT``; the host is checked here so the server never sees junk."""
    text = parse_text(value, src, "HOST:PORT (a string)")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            fail(src, "expected [IPV6]:PORT", value)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            fail(src, "expected [IPV6]:PORT with a valid IPv6 address", value)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            fail(src, "expected HOST:PORT", value)
        if ":" in host:
            fail(src, "expected HOST:PORT", value, "an IPv6 address needs brackets, e.g. '[::]:2112'")
        if not host:
            fail(src, "expected HOST:PORT with a host", value, "use 0.0.0.0 for all IPv4 or [::] for all")
        numeric = re.fullmatch(r"[0-9.]+", host) is not None
        if (numeric and not _is_ipv4(host)) or not _HOSTNAME.fullmatch(host) or len(host) > 253:
            fail(src, "expected HOST:PORT with a valid host name or IP address", value)
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        fail(src, "expected HOST:PORT with a port from 0 to 65535", value)
    return ListenAddress(host, int(port))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def parse_url(value: object, src: Src) -> str:
    """An http(s) URL with a host and a valid port, kept as written."""
    text = parse_text(value, src, "a URL (a string)")
    problem = "expected an http:// or https:// URL, e.g. 'http://collector:4317'"
    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed or invalid [IPv6] host
        fail(src, f"{problem} (bad host)", value)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", text):
        fail(src, problem, value)
    try:
        parts.port  # noqa: B018 - urllib parses the port lazily; this is the check
    except ValueError:
        fail(src, f"{problem} (bad port)", value)
    return text
