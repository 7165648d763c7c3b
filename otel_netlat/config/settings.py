"""Configuration of the ``run``, ``check`` and ``watch`` commands: one validated model.

A setting comes from, highest precedence first: a command-line flag, a ``NETLAT_*``
environment variable, the YAML file named by ``--config`` / ``NETLAT_CONFIG``, or its
default. A higher source replaces a lower one (lists are never merged), so what a flag
says is what runs.

Every bad input raises :class:`ConfigError`, whose text is one line naming where the value
came from (``--interval``, ``NETLAT_LISTEN``, ``netlat.yaml: otlp.protocol``) and the value
itself: the CLI prints it and exits, so it has to be enough to fix the input.

Nothing is coerced silently. The spellings accepted:

* Lists (``stages``, ``buckets``, ``filter.interfaces``, ``filter.netns``): flags and
  environment variables take comma-separated text, and ``--interface`` / ``--netns`` may
  also be repeated. In YAML they are a list or the same comma-separated string.
* Seconds (``interval``, ``otlp.interval``, ``buckets``) may be YAML strings, because YAML
  1.1 reads ``1e-6`` (no dot) as a string; every other YAML number must be a number.
* Booleans: text takes true/false/1/0/yes/no in any case; YAML needs a real boolean.
* Choices (hooks, log level, OTLP protocol and temporality) ignore case.
* ``null`` in YAML and an empty environment variable mean "not set".
* Unknown YAML keys, at any depth, and duplicate YAML keys are errors; unknown
  ``NETLAT_*`` variables are only warnings (:attr:`Config.warnings`), since the environment
  is shared with other tools.

The file, every key optional (flags and variables: see ``otel-netlat run --help``)::

    stages: [backlog, stack, my_stage]   # default: all this kernel supports
    interval: 5
    buckets: [1.0e-6, 2.0e-6, 4.0e-6]    # seconds, whole nanoseconds
    listen: "[::]:2112"
    otlp: {endpoint: "http://collector:4317", protocol: grpc, temporality: delta, interval: 60}
    filter: {interfaces: [eth0], netns: [blue, /proc/1234/ns/net]}
    addresses: {enabled: true, ipv4_prefix: 24, ipv6_prefix: 64}
    max_series: 2000
    start_slots: 65536
    hooks: auto
    log_level: info
    custom_stages:                        # YAML only
      - name: my_stage
        direction: receive
        start: {kind: tracepoint, target: "net:netif_receive_skb"}   # skb_field: skbaddr
        end: {kind: function, target: ip_rcv, skb_arg: 0}             # at the function's entry

The OTLP exporter's own ``OTEL_*`` variables are read by the exporter, not here: an OTLP
setting left unset is ``None``, which means "whatever OpenTelemetry's defaults and
``OTEL_*`` variables say".
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from functools import partial
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from otel_netlat.stages.table import STAGE_NAMES

__all__ = [
    "STAGE_NAMES",
    "COMMANDS",
    "ConfigError",
    "Config",
    "CustomHook",
    "CustomStage",
    "ListenAddress",
    "add_arguments",
    "load_config",
]

COMMANDS = ("run", "check", "watch")
HOOK_MODES = ("auto", "tracepoint", "kprobe", "fentry")
LOG_LEVELS = ("debug", "info", "warning", "error")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
TEMPORALITIES = ("cumulative", "delta")
DIRECTIONS = ("receive", "transmit")
CUSTOM_HOOK_KINDS = ("tracepoint", "function")

# Decimal limits so that comparisons are exact (0.05 is not a float boundary).
MIN_INTERVAL_S = Decimal("0.05")
MAX_INTERVAL_S = Decimal(3600)
# No packet waits an hour inside the kernel; the cap also keeps every bound float-exact in ns.
MAX_BOUND_S = Decimal(3600)
MAX_BOUNDS = 64
DEFAULT_BOUNDS_NS: tuple[int, ...] = tuple(1000 << k for k in range(21))  # 1 µs .. 2^20 µs
MIN_START_SLOTS, MAX_START_SLOTS = 1024, 4194304
MAX_SKB_ARG = 5  # arguments 0-5 are the ones passed in registers on every BPF architecture
NETNS_DIR = "/run/netns"
CONFIG_ENV = "NETLAT_CONFIG"
#: NETLAT_* variables set by the test VM runner and the collector config, not by users.
TOOLING_ENV = ("NETLAT_VM", "NETLAT_COLLECTOR_")
ENV_PREFIX = "NETLAT_"


class ConfigError(Exception):
    """A bad setting. ``str()`` is one line, ``"<where>: <problem>"``, fit to print before exiting."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        # A path or value with a newline in it must not break the one-line promise.
        super().__init__(" ".join(f"{where}: {problem}".splitlines()))


@dataclass(frozen=True)
class ListenAddress:
    """The Prometheus endpoint. ``host`` has no brackets; ``str()`` adds them back for IPv6."""

    host: str = "0.0.0.0"
    port: int = 2112

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CustomHook:
    """Where a custom stage starts or ends.

    ``function`` hooks fire at the entry of the function (also for the end hook: a stage
    ends when the packet reaches the end function). The skb is argument ``skb_arg`` of a
    function, or field ``skb_field`` of a tracepoint; the other one is ``None``.
    """

    kind: str
    target: str
    skb_arg: int | None = None
    skb_field: str | None = None


@dataclass(frozen=True)
class CustomStage:
    """A user-defined stage from the ``custom_stages`` list of the config file."""

    name: str
    direction: str
    start: CustomHook
    end: CustomHook


@dataclass(frozen=True)
class Config:
    """The validated settings of one command. Build it with :func:`load_config`.

    Constructing it directly (in tests) skips validation; every field has its default.
    """

    command: str = "run"
    config_file: str | None = None
    #: ``None``: every stage this kernel supports (and every custom stage).
    stages: tuple[str, ...] | None = None
    interval: float = 5.0
    bounds_ns: tuple[int, ...] = DEFAULT_BOUNDS_NS
    listen: ListenAddress = ListenAddress()
    otlp_endpoint: str | None = None
    otlp_protocol: str | None = None
    otlp_temporality: str | None = None
    otlp_interval: float | None = None
    #: Empty: no interface filter.
    interfaces: tuple[str, ...] = ()
    #: Names (resolved under /run/netns) or absolute paths, as given. Empty: no filter.
    netns: tuple[str, ...] = ()
    address_labels: bool = False
    pod_attribution: bool = False
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    max_series: int = 2000
    start_slots: int = 65536
    hooks: str = "auto"
    log_level: str = "info"
    custom_stages: tuple[CustomStage, ...] = ()
    #: ``watch`` only: refreshes before exiting; ``None`` runs until interrupted.
    count: int | None = None
    #: (field, where) for every setting not left at its default; see :meth:`source_of`.
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    #: Non-fatal findings (unknown NETLAT_* variables) for the CLI to log.
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def stages_explicit(self) -> bool:
        """Whether the user named the stages: then a stage that cannot attach is fatal."""
        return self.stages is not None

    @property
    def buckets(self) -> tuple[float, ...]:
        """Histogram bounds in seconds (``n / 1e9`` is the float nearest the exact value)."""
        return tuple(n / 1e9 for n in self.bounds_ns)

    @property
    def netns_paths(self) -> tuple[str, ...]:
        """:attr:`netns` as paths: a bare name is the bind mount ``ip netns`` makes."""
        return tuple(n if n.startswith("/") else f"{NETNS_DIR}/{n}" for n in self.netns)

    def source_of(self, name: str) -> str:
        """Where a setting came from (``"--stages"``, ``"f.yaml: stages"``, ``"default"``)."""
        return dict(self.sources).get(name, "default")


# --------------------------------------------------------------------------- value parsers


@dataclass(frozen=True)
class _Src:
    """Where a raw value came from. ``text``: a flag or variable, so strings are parsed."""

    where: str
    text: bool

    def at(self, index: int) -> _Src:
        """The source of a list item: YAML items get an index, text items show themselves."""
        return self if self.text else _Src(f"{self.where}[{index}]", False)


def _show(value: object) -> str:
    """A value as the user wrote it, short and on one line (``repr`` escapes newlines)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(src: _Src, problem: str, value: object, hint: str = "") -> NoReturn:
    raise ConfigError(src.where, f"{problem}, got {_show(value)}" + (f"; {hint}" if hint else ""))


def _suggest(word: object, choices: Sequence[str], prefix: str = "") -> str:
    """``"did you mean 'x'?"`` for the closest choice (with ``prefix``), or ``""``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6) if isinstance(word, str) else []
    return f"did you mean '{prefix}{close[0]}'?" if close else ""


def _unknown(where: str, what: str, word: object, known: Sequence[str], prefix: str = "") -> NoReturn:
    """An unknown name: the closest known one first, then the full list."""
    hint = _suggest(word, known, prefix)
    shown = f"'{prefix}{word}'" if isinstance(word, str) else _show(word)
    hint = f"; {hint}" if hint else ""
    raise ConfigError(where, f"unknown {what} {shown}{hint} (known: {', '.join(known)})")


def _text(value: object, src: _Src, what: str = "a string") -> str:
    if not isinstance(value, str):
        _fail(src, f"expected {what}", value)
    return value


def _decimal(value: object, src: _Src, what: str) -> Decimal:
    """A finite number, exactly: floats via their shortest repr, so YAML 1e-06 stays 1e-06."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        _fail(src, f"expected {what}", value)
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        _fail(src, f"expected {what}", value)
    if not number.is_finite():
        _fail(src, f"expected {what}", value)
    return number


def _seconds(value: object, src: _Src) -> float:
    number = _decimal(value, src, "a number of seconds")
    if number <= 0:
        _fail(src, "must be a positive number of seconds", value)
    if not MIN_INTERVAL_S <= number <= MAX_INTERVAL_S:
        _fail(src, f"must be between {MIN_INTERVAL_S} and {MAX_INTERVAL_S} seconds", value)
    return float(number)


def _integer(value: object, src: _Src, low: int, high: int | None = None, problem: str = "") -> int:
    """An integer in ``[low, high]``; text is parsed, a YAML string is refused with a hint."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        if not src.text:
            _fail(src, "expected an integer, not a string", value, "write it without quotes")
        number = int(value)
    if number is None:
        _fail(src, "expected an integer", value)
    if number < low or (high is not None and number > high):
        default = f"must be an integer from {low} to {high}" if high is not None else f"must be >= {low}"
        _fail(src, problem or default, value)
    return number


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _boolean(value: object, src: _Src) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and (word := value.strip().lower()) in _TRUE + _FALSE:
        if src.text:
            return word in _TRUE
        _fail(src, "expected a boolean, not a string", value, "write true or false without quotes")
    _fail(src, "expected true or false" + (" (or 1/0/yes/no)" if src.text else ""), value)


def _choice(value: object, src: _Src, choices: Sequence[str]) -> str:
    word = value.strip().lower() if isinstance(value, str) else value
    if word in choices:
        return str(word)
    _fail(src, f"expected one of {', '.join(choices)}", value, _suggest(word, choices))


def _items(value: object, src: _Src) -> list[tuple[object, _Src]]:
    """The items of a list setting, each with its own source (see the module docstring)."""
    if isinstance(value, str):
        if not value.strip():
            return []  # the caller says what the list needed
        parts = value.split(",")
        if any(not p.strip() for p in parts):
            _fail(src, "empty item in a comma-separated list", value)
        return [(p.strip(), src) for p in parts]
    if not isinstance(value, list):
        _fail(src, "expected a list or a comma-separated string", value)
    if src.text:  # a repeated flag: each occurrence may itself be a comma list
        return [item for occurrence in value for item in _items(occurrence, src)]
    return [(item, src.at(i)) for i, item in enumerate(value)]


def _names(value: object, src: _Src, check: Callable[[str, _Src], str], what: str) -> tuple[str, ...]:
    """A non-empty list of distinct strings, each validated by ``check``."""
    items = _items(value, src)
    if not items:
        _fail(src, f"must name at least one {what}", value)
    names: list[str] = []
    for item, isrc in items:
        name = check(_text(item, isrc), isrc)
        if name in names:
            raise ConfigError(isrc.where, f"{what} {_show(name)} is listed twice")
        names.append(name)
    return tuple(names)


def _stage(name: str, src: _Src, known: Sequence[str]) -> str:
    if name not in known:
        _unknown(src.where, "stage", name, known)
    return name


def _stages(value: object, src: _Src, known: Sequence[str]) -> tuple[str, ...]:
    return _names(value, src, partial(_stage, known=known), "stage")


def _bounds(value: object, src: _Src) -> tuple[int, ...]:
    """Histogram bounds in seconds → exact integer nanoseconds (the kernel slots in ns)."""
    items = _items(value, src)
    if not 1 <= len(items) <= MAX_BOUNDS:
        _fail(src, f"must list 1 to {MAX_BOUNDS} bucket bounds, not {len(items)}", value)
    bounds: list[int] = []
    previous: object = None
    for item, isrc in items:
        seconds = _decimal(item, isrc, "a bucket bound in seconds")
        if seconds <= 0 or seconds > MAX_BOUND_S:
            _fail(isrc, f"bucket bounds must be positive seconds, at most {MAX_BOUND_S}", item)
        # scaleb only moves the exponent; enough precision makes it exact for any input.
        ns = seconds.scaleb(9, Context(prec=len(seconds.as_tuple().digits) + 1))
        if ns != ns.to_integral_value():
            _fail(isrc, "bucket bounds must be whole nanoseconds (multiples of 1e-9 s)", item)
        if bounds and int(ns) <= bounds[-1]:
            problem = f"bucket bounds must increase strictly, got {_show(item)} after {_show(previous)}"
            raise ConfigError(isrc.where, problem)
        bounds.append(int(ns))
        previous = item
    return tuple(bounds)


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def _listen(value: object, src: _Src) -> ListenAddress:
    text = _text(value, src, "HOST:PORT (a string)")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            _fail(src, "expected [IPV6]:PORT", value)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            _fail(src, "expected [IPV6]:PORT with a valid IPv6 address", value)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            _fail(src, "expected HOST:PORT", value)
        if ":" in host:
            _fail(src, "expected HOST:PORT", value, "an IPv6 address needs brackets, e.g. '[::]:2112'")
        if not host:
            _fail(src, "expected HOST:PORT with a host", value, "use 0.0.0.0 for all IPv4 or [::] for all")
        numeric = re.fullmatch(r"[0-9.]+", host) is not None
        if (numeric and not _is_ipv4(host)) or not _HOSTNAME.fullmatch(host) or len(host) > 253:
            _fail(src, "expected HOST:PORT with a valid host name or IP address", value)
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        _fail(src, "expected HOST:PORT with a port from 0 to 65535", value)
    return ListenAddress(host, int(port))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _url(value: object, src: _Src) -> str:
    text = _text(value, src, "a URL (a string)")
    problem = "expected an http:// or https:// URL, e.g. 'http://collector:4317'"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", text):
        _fail(src, problem, value)
    try:
        parts.port  # noqa: B018 - urllib parses the port lazily; this is the check
    except ValueError:
        _fail(src, f"{problem} (bad port)", value)
    return text


def _ifname(name: str, src: _Src) -> str:
    """Linux's dev_valid_name: 1-15 bytes, not '.' or '..', no '/', ':' or whitespace."""
    if (
        not 1 <= len(name.encode()) <= 15
        or name in (".", "..")
        or any(c in "/:" or c.isspace() for c in name)
    ):
        _fail(src, "invalid interface name (1-15 bytes, no '/', ':' or whitespace, not '.' or '..')", name)
    return name


def _netns(name: str, src: _Src) -> str:
    """A name as ``ip netns`` accepts it, or an absolute path (existence is checked at start-up)."""
    if name.startswith("/"):
        if "\0" in name:
            _fail(src, "invalid network namespace path", name)
    elif "/" in name:
        _fail(src, "a network namespace is a name or an absolute path (e.g. /proc/PID/ns/net)", name)
    elif name in (".", "..") or len(name.encode()) > 255 or any(c.isspace() or c == "\0" for c in name):
        _fail(src, "invalid network namespace name (as in 'ip netns': no '/', whitespace, '.' or '..')", name)
    return name


def _power_of_two_slots(value: object, src: _Src) -> int:
    problem = f"must be a power of two from {MIN_START_SLOTS} to {MAX_START_SLOTS}"
    number = _integer(value, src, MIN_START_SLOTS, MAX_START_SLOTS, problem)
    if number & (number - 1):
        _fail(src, problem, value)
    return number


# --------------------------------------------------------------------------- settings table


@dataclass(frozen=True)
class _Setting:
    """One setting: its Config field, YAML key, flag, variable, parser and flag help."""

    field: str
    key: str | None  # dotted YAML path; None: flag only
    flag: str | None
    env: str | None
    parse: Callable[[Any, _Src], Any]
    help: str
    metavar: str | None = None
    commands: tuple[str, ...] = COMMANDS
    repeat: bool = False  # the flag may be given more than once
    switch: bool = False  # --flag / --no-flag


_EXPORTING = ("run", "check")

# Order matters only for help output and the "known keys" lists in messages.
_SETTINGS: tuple[_Setting, ...] = (
    _Setting(
        field="stages",
        key="stages",
        flag="--stages",
        env="NETLAT_STAGES",
        # load_config swaps in a parser that also knows the file's custom stages.
        parse=partial(_stages, known=STAGE_NAMES),
        help=f"comma list of stages to measure ({', '.join(STAGE_NAMES)} or a custom stage; "
        "default: all this kernel supports); a named stage that cannot attach is fatal",
        metavar="A,B",
    ),
    _Setting(
        field="interval",
        key="interval",
        flag="--interval",
        env="NETLAT_INTERVAL",
        parse=_seconds,
        help=f"collection interval in seconds, {MIN_INTERVAL_S} to {MAX_INTERVAL_S} (default 5)",
        metavar="SECONDS",
    ),
    _Setting(
        field="bounds_ns",
        key="buckets",
        flag="--buckets",
        env="NETLAT_BUCKETS",
        parse=_bounds,
        help="comma list of histogram bounds in seconds: increasing, whole nanoseconds, "
        f"at most {MAX_BOUNDS} (default 1e-6 * 2^k for k = 0..20)",
        metavar="S,S,...",
    ),
    _Setting(
        field="listen",
        key="listen",
        flag="--listen",
        env="NETLAT_LISTEN",
        parse=_listen,
        help="Prometheus endpoint, HOST:PORT or [IPV6]:PORT; port 0 picks a free one (default 0.0.0.0:2112)",
        metavar="HOST:PORT",
        commands=_EXPORTING,
    ),
    _Setting(
        field="otlp_endpoint",
        key="otlp.endpoint",
        flag="--otlp-endpoint",
        env="NETLAT_OTLP_ENDPOINT",
        parse=_url,
        help="OTLP endpoint URL (default: the OTEL_EXPORTER_OTLP_* variables)",
        metavar="URL",
        commands=_EXPORTING,
    ),
    _Setting(
        field="otlp_protocol",
        key="otlp.protocol",
        flag="--otlp-protocol",
        env=None,  # OTEL_EXPORTER_OTLP_PROTOCOL, read by the exporter
        parse=partial(_choice, choices=OTLP_PROTOCOLS),
        help=f"OTLP protocol: {', '.join(OTLP_PROTOCOLS)}",
        metavar="PROTOCOL",
        commands=_EXPORTING,
    ),
    _Setting(
        field="otlp_temporality",
        key="otlp.temporality",
        flag="--otlp-temporality",
        env=None,  # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
        parse=partial(_choice, choices=TEMPORALITIES),
        help=f"OTLP temporality: {', '.join(TEMPORALITIES)}",
        metavar="TEMPORALITY",
        commands=_EXPORTING,
    ),
    _Setting(
        field="otlp_interval",
        key="otlp.interval",
        flag="--otlp-interval",
        env=None,  # OTEL_METRIC_EXPORT_INTERVAL
        parse=_seconds,
        help=f"OTLP export interval in seconds, {MIN_INTERVAL_S} to {MAX_INTERVAL_S}",
        metavar="SECONDS",
        commands=_EXPORTING,
    ),
    _Setting(
        field="interfaces",
        key="filter.interfaces",
        flag="--interface",
        env="NETLAT_INTERFACES",
        parse=partial(_names, check=_ifname, what="interface"),
        help="measure only packets of this interface (repeatable or comma list)",
        metavar="NAME",
        repeat=True,
    ),
    _Setting(
        field="netns",
        key="filter.netns",
        flag="--netns",
        env="NETLAT_NETNS",
        parse=partial(_names, check=_netns, what="network namespace"),
        help="measure only packets of this network namespace: a name from 'ip netns' or a path "
        "such as /proc/PID/ns/net (repeatable or comma list)",
        metavar="NAME_OR_PATH",
        repeat=True,
    ),
    _Setting(
        field="address_labels",
        key="addresses.enabled",
        flag="--address-labels",
        env="NETLAT_ADDRESS_LABELS",
        parse=_boolean,
        help="label series with source and destination networks (default off)",
        switch=True,
    ),
    _Setting(
        field="pod_attribution",
        key="kubernetes.pod_attribution",
        flag="--pod-attribution",
        env="NETLAT_POD_ATTRIBUTION",
        parse=_boolean,
        help="in a cluster, add k8s.namespace.name and k8s.pod.name to packets whose local address "
        "is a pod IP of this node (default off; needs NODE_NAME)",
        switch=True,
    ),
    _Setting(
        field="ipv4_prefix",
        key="addresses.ipv4_prefix",
        flag="--ipv4-prefix",
        env="NETLAT_IPV4_PREFIX",
        parse=partial(_integer, low=0, high=32),
        help="IPv4 prefix length of the address labels, 0 to 32 (default 24)",
        metavar="BITS",
    ),
    _Setting(
        field="ipv6_prefix",
        key="addresses.ipv6_prefix",
        flag="--ipv6-prefix",
        env="NETLAT_IPV6_PREFIX",
        parse=partial(_integer, low=0, high=128),
        help="IPv6 prefix length of the address labels, 0 to 128 (default 64)",
        metavar="BITS",
    ),
    _Setting(
        field="max_series",
        key="max_series",
        flag="--max-series",
        env="NETLAT_MAX_SERIES",
        parse=partial(_integer, low=1, high=100000),
        help="cap on the series of each metric, 1 to 100000 (default 2000)",
        metavar="N",
    ),
    _Setting(
        field="start_slots",
        key="start_slots",
        flag="--start-slots",
        env="NETLAT_START_SLOTS",
        parse=_power_of_two_slots,
        help=f"in-kernel start table size per stage, a power of two from {MIN_START_SLOTS} "
        f"to {MAX_START_SLOTS} (default 65536)",
        metavar="N",
    ),
    _Setting(
        field="hooks",
        key="hooks",
        flag="--hooks",
        env="NETLAT_HOOKS",
        parse=partial(_choice, choices=HOOK_MODES),
        help=f"hook mechanism: {', '.join(HOOK_MODES)} (default auto)",
        metavar="MODE",
    ),
    _Setting(
        field="log_level",
        key="log_level",
        flag="--log-level",
        env="NETLAT_LOG_LEVEL",
        parse=partial(_choice, choices=LOG_LEVELS),
        help=f"log level: {', '.join(LOG_LEVELS)} (default info)",
        metavar="LEVEL",
    ),
    _Setting(
        field="count",
        key=None,
        flag="--count",
        env=None,
        parse=partial(_integer, low=1),
        help="number of refreshes before exiting (default: until interrupted)",
        metavar="N",
        commands=("watch",),
    ),
)

_CUSTOM_KEY = "custom_stages"
_ENV_NAMES = (CONFIG_ENV, *(s.env for s in _SETTINGS if s.env))


# --------------------------------------------------------------------------- YAML file


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would otherwise let the last win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # merge keys may override; non-scalar keys are refused by the caller
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str, origin: str) -> object:
    """The parsed file; ``origin`` (``--config`` or ``NETLAT_CONFIG``) names who asked for it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(origin, f"cannot read config file {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else path
        context = f" ({e.context})" if e.context else ""
        raise ConfigError(where, f"invalid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"invalid YAML: {e}") from None


def _check_keys(mapping: dict[Any, Any], known: Sequence[str], file: str, prefix: str) -> None:
    """Refuse unknown keys, naming the full key path and the closest known key."""
    for key in mapping:
        if key not in known:
            _unknown(file, "key", key, known, prefix)


def _mapping(
    value: object, file: str, path: str, known: Sequence[str], required: Sequence[str] = ()
) -> dict[str, Any]:
    """A YAML section or list entry: a mapping with only ``known`` keys and every ``required`` one."""
    if not isinstance(value, dict):
        _fail(_Src(f"{file}: {path}", False), f"expected a mapping with keys {', '.join(known)}", value)
    _check_keys(value, known, file, f"{path}.")
    for key in required:
        if key not in value:
            raise ConfigError(f"{file}: {path}", f"missing key '{key}'")
    return value


def _file_values(data: object, file: str) -> dict[str, tuple[object, _Src]]:
    """The settings in the file by dotted key, each with its source; sections flattened."""
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        _fail(_Src(file, False), "expected a mapping of settings at the top level (e.g. 'interval: 5')", data)
    sections: dict[str, list[str]] = {}
    for s in _SETTINGS:
        if s.key and "." in s.key:
            section, _, sub = s.key.partition(".")
            sections.setdefault(section, []).append(sub)
    top = list(dict.fromkeys(s.key.partition(".")[0] for s in _SETTINGS if s.key)) + [_CUSTOM_KEY]
    _check_keys(data, top, file, "")
    values: dict[str, tuple[object, _Src]] = {}
    for key, value in data.items():
        if key not in sections:
            values[key] = (value, _Src(f"{file}: {key}", False))
        elif value is not None:  # a section with every setting commented out is empty, not an error
            for sub, item in _mapping(value, file, key, sections[key]).items():
                values[f"{key}.{sub}"] = (item, _Src(f"{file}: {key}.{sub}", False))
    return values


_STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _custom_hook(value: object, file: str, path: str) -> CustomHook:
    entry = _mapping(value, file, path, ("kind", "target", "skb_arg", "skb_field"), ("kind", "target"))

    def src(key: str) -> _Src:
        return _Src(f"{file}: {path}.{key}", False)

    kind = _choice(entry["kind"], src("kind"), CUSTOM_HOOK_KINDS)
    target = _text(entry["target"], src("target"))
    if kind == "tracepoint":
        group, sep, event = target.partition(":")
        if not (sep and _IDENTIFIER.fullmatch(group) and _IDENTIFIER.fullmatch(event)):
            _fail(src("target"), "expected a tracepoint as GROUP:EVENT, e.g. 'net:netif_rx'", target)
        if "skb_arg" in entry:
            _fail(
                src("skb_arg"),
                "applies to function hooks; a tracepoint names its skb with skb_field",
                entry["skb_arg"],
            )
        skb_field = _text(entry.get("skb_field", "skbaddr"), src("skb_field"))
        if not _IDENTIFIER.fullmatch(skb_field):
            _fail(src("skb_field"), "expected a tracepoint field name (a C identifier)", skb_field)
        return CustomHook(kind, target, skb_field=skb_field)
    if not _IDENTIFIER.fullmatch(target):
        _fail(src("target"), "expected a bare kernel function name (a C identifier), e.g. 'ip_rcv'", target)
    if "skb_field" in entry:
        _fail(
            src("skb_field"),
            "applies to tracepoint hooks; a function names its skb with skb_arg",
            entry["skb_field"],
        )
    skb_arg = _integer(entry.get("skb_arg", 0), src("skb_arg"), 0, MAX_SKB_ARG)
    return CustomHook(kind, target, skb_arg=skb_arg)


def _custom_stages(value: object, file: str) -> tuple[CustomStage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        _fail(_Src(f"{file}: {_CUSTOM_KEY}", False), "expected a list of stages", value)
    stages: list[CustomStage] = []
    for i, item in enumerate(value):
        path = f"{_CUSTOM_KEY}[{i}]"
        keys = ("name", "direction", "start", "end")
        entry = _mapping(item, file, path, keys, required=keys)
        src = _Src(f"{file}: {path}.name", False)
        name = _text(entry["name"], src)
        if not _STAGE_NAME.fullmatch(name):
            _fail(src, "a stage name is a lowercase letter then up to 31 of [a-z0-9_]", name)
        if name in STAGE_NAMES:
            _fail(src, "a custom stage cannot reuse a built-in stage name", name)
        if any(s.name == name for s in stages):
            _fail(src, "a custom stage with this name is already defined", name)
        direction = _choice(entry["direction"], _Src(f"{file}: {path}.direction", False), DIRECTIONS)
        start = _custom_hook(entry["start"], file, f"{path}.start")
        end = _custom_hook(entry["end"], file, f"{path}.end")
        if (start.kind, start.target) == (end.kind, end.target):
            _fail(
                _Src(f"{file}: {path}.end", False), "the end hook must differ from the start hook", end.target
            )
        stages.append(CustomStage(name, direction, start, end))
    return tuple(stages)


# --------------------------------------------------------------------------- public API


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the configuration flags of ``command`` to its (sub)parser.

    Every flag defaults to ``None`` so :func:`load_config` can tell "not given" from a
    value, which is what lets a variable or the file win over an absent flag.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; expected one of {COMMANDS}")
    parser.set_defaults(netlat_command=command)
    parser.add_argument(
        "--config", metavar="FILE", default=None, help=f"YAML configuration file [env {CONFIG_ENV}]"
    )
    for s in _SETTINGS:
        if s.flag is None or command not in s.commands:
            continue
        help_text = f"{s.help} [env {s.env}]" if s.env else s.help
        if s.switch:
            parser.add_argument(
                s.flag, dest=s.field, default=None, help=help_text, action=argparse.BooleanOptionalAction
            )
        else:
            parser.add_argument(
                s.flag,
                dest=s.field,
                default=None,
                help=help_text,
                metavar=s.metavar,
                action="append" if s.repeat else "store",
            )


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Merge flags, ``NETLAT_*`` variables, the config file and defaults into a :class:`Config`.

    ``args`` comes from a parser set up by :func:`add_arguments` (a flag the command does
    not have simply counts as not given). Raises :class:`ConfigError` on any bad input.
    """
    command = getattr(args, "netlat_command", None) or "run"
    config_file: str | None = None
    file_values: dict[str, tuple[object, _Src]] = {}
    custom: tuple[CustomStage, ...] = ()
    flag_file = getattr(args, "config", None)
    if flag_file is not None or environ.get(CONFIG_ENV):
        origin = "--config" if flag_file is not None else CONFIG_ENV
        config_file = flag_file if flag_file is not None else environ[CONFIG_ENV]
        if not config_file:
            raise ConfigError(origin, "expected a file name, got ''")
        file_values = _file_values(_read_yaml(config_file, origin), config_file)
        raw_custom = file_values.pop(_CUSTOM_KEY, (None, None))[0]
        custom = _custom_stages(raw_custom, config_file)

    known_stages = (*STAGE_NAMES, *(c.name for c in custom))
    values: dict[str, Any] = {}
    sources: list[tuple[str, str]] = []
    for s in _SETTINGS:
        raw, src = _pick(s, command, args, environ, file_values)
        if src is None:
            continue  # the Config default applies
        parse = partial(_stages, known=known_stages) if s.field == "stages" else s.parse
        values[s.field] = parse(raw, src)
        sources.append((s.field, src.where))

    warnings = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in _ENV_NAMES and not name.startswith(TOOLING_ENV):
            hint = _suggest(name, _ENV_NAMES)
            warnings.append(f"{name}: unknown environment variable, ignored" + (f"; {hint}" if hint else ""))
    return Config(
        command=command,
        config_file=config_file,
        custom_stages=custom,
        sources=tuple(sources),
        warnings=tuple(warnings),
        **values,
    )


def _pick(
    s: _Setting,
    command: str,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    file_values: dict[str, tuple[object, _Src]],
) -> tuple[object, _Src | None]:
    """The highest-precedence raw value of a setting and its source (``None``: default)."""
    if s.flag and command in s.commands and (raw := getattr(args, s.field, None)) is not None:
        return raw, _Src(s.flag, True)
    if s.env and (raw := environ.get(s.env)):
        return raw, _Src(s.env, True)
    if s.key and s.key in file_values and file_values[s.key][0] is not None:
        return file_values[s.key]
    return None, None
