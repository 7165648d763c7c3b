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
    latency_sample: 1
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

Everything outside this package imports from here. Inside, one job a module:
``errors`` (the one-line :class:`ConfigError`), ``parsers`` (one raw value to a checked
setting), ``yaml_file`` (the strict file reader), ``custom_stages`` (the ``custom_stages``
schema), ``settings`` (the table of settings and :class:`Config`) and ``load`` (flags,
variables and file merged into a :class:`Config`).
"""

from otel_netlat.config.custom_stages import CustomHook, CustomStage
from otel_netlat.config.errors import ConfigError
from otel_netlat.config.load import add_arguments, load_config
from otel_netlat.config.parsers import OTLP_PROTOCOLS, ListenAddress, parse_otlp_protocol
from otel_netlat.config.settings import DEFAULT_BOUNDS_NS, Config
from otel_netlat.stages.table import STAGE_NAMES

__all__ = [
    "DEFAULT_BOUNDS_NS",
    "OTLP_PROTOCOLS",
    "STAGE_NAMES",
    "Config",
    "ConfigError",
    "CustomHook",
    "CustomStage",
    "ListenAddress",
    "add_arguments",
    "load_config",
    "parse_otlp_protocol",
]
