"""The table of settings: each one's Config field, YAML key, flag, variable, parser and help.

One row per setting is the single place a setting is declared: the flags, the variables,
the YAML keys a file may hold and the ``--help`` text all come from :data:`SETTINGS`.
:class:`Config` is what a loaded table becomes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from otel_netlat.config.custom_stages import CUSTOM_STAGES_KEY, CustomStage
from otel_netlat.config.errors import Src
from otel_netlat.config.parsers import (
    MAX_BOUNDS,
    MAX_INTERVAL_S,
    MAX_START_SLOTS,
    MIN_INTERVAL_S,
    MIN_START_SLOTS,
    OTLP_PROTOCOLS,
    ListenAddress,
    check_interface,
    check_netns,
    parse_boolean,
    parse_bounds,
    parse_choice,
    parse_integer,
    parse_listen,
    parse_names,
    parse_otlp_protocol,
    parse_seconds,
    parse_stage_thresholds,
    parse_stages,
    parse_start_slots,
    parse_threshold,
    parse_url,
)
from otel_netlat.stages.table import STAGE_NAMES

__all__ = [
    "COMMANDS",
    "CONFIG_ENV",
    "DEFAULT_BOUNDS_NS",
    "ENV_NAMES",
    "ENV_PREFIX",
    "SETTINGS",
    "TOOLING_ENV",
    "YAML_KEYS",
    "Config",
    "Setting",
]

COMMANDS = ("run", "check", "watch", "slow")
HOOK_MODES = ("auto", "tracepoint", "kprobe", "fentry")
LOG_LEVELS = ("debug", "info", "warning", "error")
TEMPORALITIES = ("cumulative", "delta")
DEFAULT_BOUNDS_NS: tuple[int, ...] = tuple(1000 << k for k in range(21))  # 1 µs .. 2^20 µs
NETNS_DIR = "/run/netns"
MAX_SERIES_TTL_S = 7 * 86400
ENV_PREFIX = "NETLAT_"
CONFIG_ENV = "NETLAT_CONFIG"
#: NETLAT_* variables set by the test VM runner and the collector config, not by users.
TOOLING_ENV = ("NETLAT_VM", "NETLAT_COLLECTOR_")


@dataclass(frozen=True)
class Config:
    """The validated settings of one command. Build it with :func:`~otel_netlat.config.load_config`.

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
    cpu_labels: bool = False
    pod_attribution: bool = False
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    max_series: int = 2000
    series_ttl: int = 300
    latency_sample: int = 1
    start_slots: int = 65536
    hooks: str = "auto"
    log_level: str = "info"
    custom_stages: tuple[CustomStage, ...] = ()
    #: Slow-packet records (issue 14): off when None and no stage has its own threshold.
    slow_threshold: float | None = None
    slow_rate: int = 100
    slow_stages: tuple[tuple[str, float], ...] = ()
    #: ``watch``: refreshes before exiting; ``slow``: records; ``None`` runs until interrupted.
    count: int | None = None
    #: ``slow`` only: one JSON object per record instead of a line of text.
    json: bool = False
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


#: The default of a name in :class:`Setting`: spell it after the field.
FROM_FIELD = "<from field>"


@dataclass(frozen=True)
class Setting:
    """One setting: its Config field, YAML key, flag, variable, parser and flag help.

    A name left at :data:`FROM_FIELD` follows the field, so that the three spellings
    cannot drift apart: ``max_series`` is YAML ``max_series``, ``--max-series`` and
    ``NETLAT_MAX_SERIES``. ``None`` means the setting has no such name.
    """

    field: str
    parse: Callable[[Any, Src], Any]
    help: str
    key: str | None = FROM_FIELD  # dotted YAML path
    flag: str | None = FROM_FIELD
    env: str | None = FROM_FIELD
    metavar: str | None = None
    commands: tuple[str, ...] = COMMANDS
    repeat: bool = False  # the flag may be given more than once
    switch: bool = False  # --flag / --no-flag

    def __post_init__(self) -> None:
        spelled = {
            "key": self.field,
            "flag": "--" + self.field.replace("_", "-"),
            "env": ENV_PREFIX + self.field.upper(),
        }
        for name, value in spelled.items():
            if getattr(self, name) == FROM_FIELD:
                object.__setattr__(self, name, value)


_EXPORTING = ("run", "check")

# Order matters only for help output and the "known keys" lists in messages.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "stages",
        # load_config swaps in a parser that also knows the file's custom stages.
        parse=partial(parse_stages, known=STAGE_NAMES),
        help=f"comma list of stages to measure ({', '.join(STAGE_NAMES)} or a custom stage; "
        "default: all this kernel supports); a named stage that cannot attach is fatal",
        metavar="A,B",
    ),
    Setting(
        "interval",
        parse=parse_seconds,
        help=f"collection interval in seconds, {MIN_INTERVAL_S} to {MAX_INTERVAL_S} (default 5)",
        metavar="SECONDS",
    ),
    Setting(
        "bounds_ns",
        key="buckets",
        flag="--buckets",
        env="NETLAT_BUCKETS",
        parse=parse_bounds,
        help="comma list of histogram bounds in seconds: increasing, whole nanoseconds, "
        f"at most {MAX_BOUNDS} (default 1e-6 * 2^k for k = 0..20)",
        metavar="S,S,...",
    ),
    Setting(
        "listen",
        parse=parse_listen,
        help="Prometheus endpoint, HOST:PORT or [IPV6]:PORT; port 0 picks a free one (default 0.0.0.0:2112)",
        metavar="HOST:PORT",
        commands=_EXPORTING,
    ),
    Setting(
        "otlp_endpoint",
        key="otlp.endpoint",
        parse=parse_url,
        help="OTLP endpoint URL (default: the OTEL_EXPORTER_OTLP_* variables)",
        metavar="URL",
        commands=_EXPORTING,
    ),
    Setting(
        "otlp_protocol",
        key="otlp.protocol",
        env=None,  # OTEL_EXPORTER_OTLP_PROTOCOL, read by the exporter
        parse=lambda value, src: parse_otlp_protocol(value, src.where),
        help=f"OTLP protocol: {', '.join(OTLP_PROTOCOLS)}",
        metavar="PROTOCOL",
        commands=_EXPORTING,
    ),
    Setting(
        "otlp_temporality",
        key="otlp.temporality",
        env=None,  # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
        parse=partial(parse_choice, choices=TEMPORALITIES),
        help=f"OTLP temporality: {', '.join(TEMPORALITIES)}",
        metavar="TEMPORALITY",
        commands=_EXPORTING,
    ),
    Setting(
        "otlp_interval",
        key="otlp.interval",
        env=None,  # OTEL_METRIC_EXPORT_INTERVAL
        parse=parse_seconds,
        help=f"OTLP export interval in seconds, {MIN_INTERVAL_S} to {MAX_INTERVAL_S}",
        metavar="SECONDS",
        commands=_EXPORTING,
    ),
    Setting(
        "interfaces",
        key="filter.interfaces",
        flag="--interface",
        parse=partial(parse_names, check=check_interface, what="interface"),
        help="measure only packets of this interface (repeatable or comma list)",
        metavar="NAME",
        repeat=True,
    ),
    Setting(
        "netns",
        key="filter.netns",
        parse=partial(parse_names, check=check_netns, what="network namespace"),
        help="measure only packets of this network namespace: a name from 'ip netns' or a path "
        "such as /proc/PID/ns/net (repeatable or comma list)",
        metavar="NAME_OR_PATH",
        repeat=True,
    ),
    Setting(
        "address_labels",
        key="addresses.enabled",
        parse=parse_boolean,
        help="label series with source and destination networks (default off)",
        switch=True,
    ),
    Setting(
        "pod_attribution",
        key="kubernetes.pod_attribution",
        parse=parse_boolean,
        help="in a cluster, add k8s.namespace.name and k8s.pod.name to packets whose local address "
        "is a pod IP of this node (default off; needs NODE_NAME)",
        switch=True,
    ),
    Setting(
        "ipv4_prefix",
        key="addresses.ipv4_prefix",
        parse=partial(parse_integer, low=0, high=32),
        help="IPv4 prefix length of the address labels, 0 to 32 (default 24)",
        metavar="BITS",
    ),
    Setting(
        "ipv6_prefix",
        key="addresses.ipv6_prefix",
        parse=partial(parse_integer, low=0, high=128),
        help="IPv6 prefix length of the address labels, 0 to 128 (default 64)",
        metavar="BITS",
    ),
    Setting(
        "cpu_labels",
        parse=parse_boolean,
        help="label the latency and softirq series with cpu.logical_number, the CPU a sample "
        "ended on: up to series x CPUs, counted against --max-series (default off)",
        switch=True,
        commands=_EXPORTING,
    ),
    Setting(
        "latency_sample",
        parse=partial(parse_integer, low=1, high=65536),
        help="time one packet in N, chosen at random at each stage start: packet counts, drops "
        "and outcomes stay exact, the latency histograms hold about 1/N of the packets "
        "(netlat.latency.sample_every says N), 1 to 65536 (default 1: every packet)",
        metavar="N",
    ),
    Setting(
        "max_series",
        parse=partial(parse_integer, low=1, high=100000),
        help="cap on the series of each metric, 1 to 100000 (default 2000)",
        metavar="N",
    ),
    Setting(
        "series_ttl",
        parse=partial(parse_integer, low=1, high=MAX_SERIES_TTL_S),
        help="seconds an address-labelled or pod series may go without new counts before it is "
        f"removed from the kernel map and the exporters, 1 to {MAX_SERIES_TTL_S} (default 300)",
        metavar="SECONDS",
        commands=_EXPORTING,
    ),
    Setting(
        "slow_threshold",
        key="slow.threshold",
        parse=parse_threshold,
        help="write a record of every sample slower than this many seconds (its 5-tuple, stage, "
        "CPU) for exemplars, OTLP logs and 'otel-netlat slow' (default off)",
        metavar="SECONDS",
    ),
    Setting(
        "slow_rate",
        key="slow.rate",
        parse=partial(parse_integer, low=1, high=100000),
        help="at most this many slow records per second per CPU, 1 to 100000; the rest are "
        "counted as lost (default 100)",
        metavar="N",
    ),
    Setting(
        "slow_stages",
        key="slow.stages",
        flag=None,
        env=None,
        parse=parse_stage_thresholds,
        help="per-stage thresholds (YAML only): {stage: seconds}",
    ),
    Setting(
        "start_slots",
        parse=parse_start_slots,
        help=f"in-kernel start table size per stage, a power of two from {MIN_START_SLOTS} "
        f"to {MAX_START_SLOTS} (default 65536)",
        metavar="N",
    ),
    Setting(
        "hooks",
        parse=partial(parse_choice, choices=HOOK_MODES),
        help=f"hook mechanism: {', '.join(HOOK_MODES)} (default auto)",
        metavar="MODE",
    ),
    Setting(
        "log_level",
        parse=partial(parse_choice, choices=LOG_LEVELS),
        help=f"log level: {', '.join(LOG_LEVELS)} (default info)",
        metavar="LEVEL",
    ),
    Setting(
        "count",
        key=None,
        env=None,
        parse=partial(parse_integer, low=1),
        help="watch: refreshes, slow: records, before exiting (default: until interrupted)",
        metavar="N",
        commands=("watch", "slow"),
    ),
    Setting(
        "json",
        key=None,
        env=None,
        parse=parse_boolean,
        help="one JSON object per record (semantic-convention keys) instead of a line of text",
        switch=True,
        commands=("slow",),
    ),
)

#: Every NETLAT_* variable a user may set; any other one is warned about.
ENV_NAMES = (CONFIG_ENV, *(s.env for s in SETTINGS if s.env))
#: Every key the config file may hold, dotted inside a section.
YAML_KEYS = (*(s.key for s in SETTINGS if s.key), CUSTOM_STAGES_KEY)
