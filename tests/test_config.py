"""Configuration: precedence, defaults, parsing, and one-line errors that name their source."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from otel_netlat.config import (
    STAGE_NAMES,
    Config,
    ConfigError,
    CustomHook,
    CustomStage,
    ListenAddress,
    add_arguments,
    load_config,
)

DEFAULT_BUCKETS = tuple(1e-6 * 2**k for k in range(21))


def parser_for(command: str = "run") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"otel-netlat {command}")
    add_arguments(parser, command)
    return parser


def load(argv: list[str] | None = None, env: dict[str, str] | None = None, command: str = "run") -> Config:
    return load_config(parser_for(command).parse_args(argv or []), env or {})


@pytest.fixture
def config_file(tmp_path: Path):
    """Write YAML text to a file and return its path."""

    def write(text: str) -> str:
        path = tmp_path / "netlat.yaml"
        path.write_text(text)
        return str(path)

    return write


# --------------------------------------------------------------------------- defaults


def test_defaults():
    cfg = load()
    assert cfg == Config()
    assert cfg.command == "run"
    assert cfg.config_file is None
    assert cfg.stages is None and not cfg.stages_explicit
    assert cfg.interval == 5.0
    assert cfg.listen == ListenAddress("0.0.0.0", 2112)
    assert (cfg.otlp_endpoint, cfg.otlp_protocol, cfg.otlp_temporality, cfg.otlp_interval) == (None,) * 4
    assert cfg.interfaces == () and cfg.netns == ()
    assert (cfg.address_labels, cfg.ipv4_prefix, cfg.ipv6_prefix) == (False, 24, 64)
    assert (cfg.max_series, cfg.start_slots, cfg.hooks, cfg.log_level) == (2000, 65536, "auto", "info")
    assert cfg.custom_stages == () and cfg.count is None
    assert cfg.sources == () and cfg.warnings == ()
    assert cfg.source_of("interval") == "default"


def test_default_buckets_are_21_powers_of_two_microseconds():
    cfg = load()
    assert len(cfg.buckets) == 21
    assert cfg.buckets == DEFAULT_BUCKETS  # exact float equality, not approx
    assert cfg.bounds_ns == tuple(1000 * 2**k for k in range(21))
    assert all(type(n) is int for n in cfg.bounds_ns)


def test_flags_default_to_none_so_precedence_works():
    args = parser_for("run").parse_args([])
    for name in ("config", "stages", "interval", "bounds_ns", "listen", "interfaces", "address_labels"):
        assert getattr(args, name) is None


def test_stage_names_match_the_stage_table():
    assert STAGE_NAMES == ("backlog", "stack", "socket", "qdisc", "drops")


# --------------------------------------------------------------------------- precedence


def test_precedence_flag_over_env_over_file_over_default(config_file):
    path = config_file("interval: 1\nlog_level: debug\n")
    env = {"NETLAT_CONFIG": path, "NETLAT_INTERVAL": "2"}
    cfg = load(["--interval", "3"], env)
    assert cfg.interval == 3.0 and cfg.source_of("interval") == "--interval"
    cfg = load([], env)
    assert cfg.interval == 2.0 and cfg.source_of("interval") == "NETLAT_INTERVAL"
    cfg = load([], {"NETLAT_CONFIG": path})
    assert cfg.interval == 1.0 and cfg.source_of("interval") == f"{path}: interval"
    assert cfg.log_level == "debug" and cfg.config_file == path
    assert load().interval == 5.0


def test_config_flag_beats_config_env(config_file, tmp_path):
    path = config_file("interval: 7\n")
    cfg = load(["--config", path], {"NETLAT_CONFIG": str(tmp_path / "missing.yaml")})
    assert cfg.interval == 7.0 and cfg.config_file == path


def test_higher_source_replaces_lists_rather_than_merging(config_file):
    path = config_file("filter:\n  interfaces: [eth0, eth1]\nstages: [stack]\n")
    cfg = load(["--config", path, "--stages", "qdisc"], {"NETLAT_INTERFACES": "lo"})
    assert cfg.interfaces == ("lo",)
    assert cfg.stages == ("qdisc",)


def test_switch_flag_overrides_env():
    assert load([], {"NETLAT_ADDRESS_LABELS": "yes"}).address_labels is True
    assert load(["--no-address-labels"], {"NETLAT_ADDRESS_LABELS": "yes"}).address_labels is False


def test_empty_env_var_means_unset():
    assert load([], {"NETLAT_INTERVAL": "", "NETLAT_CONFIG": "", "NETLAT_STAGES": ""}) == Config()


def test_yaml_null_and_empty_sections_mean_unset(config_file):
    path = config_file("interval: null\notlp:\nfilter:\naddresses: {enabled: null}\ncustom_stages:\n")
    assert load(["--config", path]) == Config(config_file=path)
    assert load(["--config", config_file("")]).interval == 5.0  # empty file


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("[::]:2112", "::", 2112, "[::]:2112"),
        ("[::1]:0", "::1", 0, "[::1]:0"),
        ("[fe80::1%eth0]:9000", "fe80::1%eth0", 9000, "[fe80::1%eth0]:9000"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"),
        ("localhost:2112", "localhost", 2112, "localhost:2112"),
    ],
)
def test_listen(text, host, port, shown):
    cfg = load(["--listen", text])
    assert cfg.listen == ListenAddress(host, port)
    assert str(cfg.listen) == shown


def test_buckets_are_exact_nanoseconds(config_file):
    cfg = load(["--buckets", "1e-9, 0.000002,3"])
    assert cfg.bounds_ns == (1, 2000, 3_000_000_000)
    assert cfg.buckets == (1e-9, 2e-6, 3.0)
    # YAML 1.1 reads 1e-4 (no dot) as a string: accepted for seconds.
    path = config_file("buckets: [1.0e-6, 0.00001, '1e-4', 0.1, 1]\n")
    assert load(["--config", path]).bounds_ns == (1000, 10_000, 100_000, 100_000_000, 1_000_000_000)
    assert load(["--config", config_file("buckets: 1e-6,2e-6\n")]).bounds_ns == (1000, 2000)


def test_sixty_four_buckets_allowed():
    text = ",".join(f"{k + 1}e-6" for k in range(64))
    assert len(load(["--buckets", text]).bounds_ns) == 64


def test_stages_explicit_and_in_order():
    cfg = load([], {"NETLAT_STAGES": "qdisc, backlog"})
    assert cfg.stages == ("qdisc", "backlog") and cfg.stages_explicit
    assert cfg.source_of("stages") == "NETLAT_STAGES"


def test_interfaces_repeatable_and_comma():
    cfg = load(["--interface", "eth0", "--interface", "veth1,veth2"])
    assert cfg.interfaces == ("eth0", "veth1", "veth2")


def test_netns_names_and_paths():
    cfg = load(["--netns", "blue", "--netns", "/proc/1/ns/net"])
    assert cfg.netns == ("blue", "/proc/1/ns/net")
    assert cfg.netns_paths == ("/run/netns/blue", "/proc/1/ns/net")
    assert load([], {"NETLAT_NETNS": "red,green"}).netns == ("red", "green")


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("NO", False), ("1", True), ("0", False)])
def test_env_booleans(text, value):
    assert load([], {"NETLAT_ADDRESS_LABELS": text}).address_labels is value


def test_choices_ignore_case_and_numbers_parse():
    cfg = load(
        ["--hooks", "FENTRY", "--ipv4-prefix", "16", "--ipv6-prefix", "48", "--start-slots", "1024"],
        {"NETLAT_LOG_LEVEL": "DEBUG", "NETLAT_MAX_SERIES": "100000"},
    )
    assert (cfg.hooks, cfg.log_level, cfg.ipv4_prefix, cfg.ipv6_prefix) == ("fentry", "debug", 16, 48)
    assert (cfg.start_slots, cfg.max_series) == (1024, 100000)


def test_otlp_from_file_and_flags(config_file):
    path = config_file(
        "otlp:\n  endpoint: http://collector:4318\n  protocol: http/protobuf\n"
        "  temporality: delta\n  interval: 10\n"
    )
    cfg = load(["--config", path, "--otlp-interval", "2.5"])
    assert cfg.otlp_endpoint == "http://collector:4318"
    assert (cfg.otlp_protocol, cfg.otlp_temporality, cfg.otlp_interval) == ("http/protobuf", "delta", 2.5)
    assert load([], {"NETLAT_OTLP_ENDPOINT": "https://c:4317"}).otlp_endpoint == "https://c:4317"


def test_full_file(config_file):
    path = config_file(
        """
stages: [backlog, stack]
interval: 0.5
listen: "[::]:9464"
filter:
  interfaces: [eth0]
  netns: [blue]
addresses:
  enabled: true
  ipv4_prefix: 16
  ipv6_prefix: 56
max_series: 500
start_slots: 131072
hooks: tracepoint
log_level: warning
"""
    )
    cfg = load(["--config", path])
    assert cfg.stages == ("backlog", "stack") and cfg.interval == 0.5
    assert cfg.listen == ListenAddress("::", 9464)
    assert (cfg.interfaces, cfg.netns) == (("eth0",), ("blue",))
    assert (cfg.address_labels, cfg.ipv4_prefix, cfg.ipv6_prefix) == (True, 16, 56)
    assert (cfg.max_series, cfg.start_slots, cfg.hooks, cfg.log_level) == (
        500,
        131072,
        "tracepoint",
        "warning",
    )


CUSTOM = """
custom_stages:
  - name: ip_input
    direction: receive
    start: {kind: tracepoint, target: "net:netif_receive_skb"}
    end: {kind: function, target: ip_rcv}
  - name: tx2
    direction: transmit
    start: {kind: function, target: dev_queue_xmit, skb_arg: 0}
    end: {kind: tracepoint, target: "net:net_dev_xmit", skb_field: skbaddr}
"""


def test_custom_stages(config_file):
    cfg = load(["--config", config_file(CUSTOM), "--stages", "ip_input,stack"])
    assert cfg.custom_stages == (
        CustomStage(
            "ip_input",
            "receive",
            CustomHook("tracepoint", "net:netif_receive_skb", skb_field="skbaddr"),
            CustomHook("function", "ip_rcv", skb_arg=0),
        ),
        CustomStage(
            "tx2",
            "transmit",
            CustomHook("function", "dev_queue_xmit", skb_arg=0),
            CustomHook("tracepoint", "net:net_dev_xmit", skb_field="skbaddr"),
        ),
    )
    assert cfg.stages == ("ip_input", "stack")


def test_custom_stage_name_unknown_without_file():
    with pytest.raises(ConfigError, match="unknown stage 'ip_input'"):
        load(["--stages", "ip_input"])


def test_watch_count_and_command_specific_flags():
    cfg = load(["--count", "3", "--interval", "1"], command="watch")
    assert (cfg.command, cfg.count, cfg.interval) == ("watch", 3, 1.0)
    assert load(command="check").command == "check"
    with pytest.raises(SystemExit):
        parser_for("watch").parse_args(["--listen", "0.0.0.0:1"])
    with pytest.raises(SystemExit):
        parser_for("run").parse_args(["--count", "1"])


def test_unknown_netlat_env_is_a_warning():
    cfg = load([], {"NETLAT_INTERVALS": "3", "PATH": "/bin"})
    assert cfg.interval == 5.0
    assert cfg.warnings == (
        "NETLAT_INTERVALS: unknown environment variable, ignored; did you mean 'NETLAT_INTERVAL'?",
    )


def test_add_arguments_rejects_unknown_command():
    with pytest.raises(ValueError):
        add_arguments(argparse.ArgumentParser(), "serve")


# --------------------------------------------------------------------------- errors

CUSTOM_HOOKS = (
    "    start: {kind: function, target: ip_rcv}\n    end: {kind: function, target: ip_rcv_finish}\n"
)
CUSTOM_OK = "    direction: receive\n" + CUSTOM_HOOKS

# (argv, env, yaml text or None, fragments the message must contain). "FILE" stands for the
# config file's path; a case with YAML gets "--config FILE" added.
BAD = {
    # flags
    "interval-negative": (["--interval", "-1"], {}, None, ["--interval: must be a positive", "'-1'"]),
    "interval-small": (["--interval", "0.01"], {}, None, ["--interval", "0.05", "'0.01'"]),
    "interval-large": (["--interval=3601"], {}, None, ["--interval", "'3601'"]),
    "interval-word": (["--interval", "fast"], {}, None, ["--interval", "'fast'"]),
    "interval-nan": (["--interval", "nan"], {}, None, ["--interval", "'nan'"]),
    "bucket-sub-ns": (["--buckets", "1e-6,1.5e-9"], {}, None, ["--buckets", "nanoseconds", "'1.5e-9'"]),
    "bucket-order": (["--buckets", "2e-6,1e-6"], {}, None, ["--buckets", "increase", "'1e-6'", "'2e-6'"]),
    "bucket-repeat": (["--buckets", "1e-6,1e-6"], {}, None, ["--buckets", "increase", "'1e-6'"]),
    "bucket-negative": (["--buckets=-1e-6"], {}, None, ["--buckets", "positive", "'-1e-6'"]),
    "bucket-empty-item": (["--buckets", "1e-6,,2e-6"], {}, None, ["--buckets", "empty", "'1e-6,,2e-6'"]),
    "bucket-too-many": (
        ["--buckets", ",".join(f"{k}e-6" for k in range(1, 66))],
        {},
        None,
        ["--buckets", "65"],
    ),
    "bucket-word": (["--buckets", "1us"], {}, None, ["--buckets", "'1us'"]),
    "stage-unknown": (["--stages", "stak"], {}, None, ["--stages", "'stak'", "did you mean 'stack'"]),
    "stage-twice": (["--stages", "stack,stack"], {}, None, ["--stages", "'stack'", "twice"]),
    "stage-none": (["--stages", ""], {}, None, ["--stages", "at least one", "''"]),
    "listen-no-port": (["--listen", "abc"], {}, None, ["--listen: expected HOST:PORT", "'abc'"]),
    "listen-bare-v6": (["--listen", "::1:2112"], {}, None, ["--listen", "'::1:2112'", "brackets"]),
    "listen-big-port": (["--listen", "0.0.0.0:70000"], {}, None, ["--listen", "'0.0.0.0:70000'"]),
    "listen-bad-v6": (["--listen", "[zz]:80"], {}, None, ["--listen", "'[zz]:80'"]),
    "listen-no-host": (["--listen", ":2112"], {}, None, ["--listen", "':2112'", "[::]"]),
    "listen-bad-v4": (["--listen", "300.1.1.1:80"], {}, None, ["--listen", "'300.1.1.1:80'"]),
    "otlp-no-scheme": (
        ["--otlp-endpoint", "collector:4317"],
        {},
        None,
        ["--otlp-endpoint", "'collector:4317'"],
    ),
    "otlp-protocol": (["--otlp-protocol", "grpcc"], {}, None, ["--otlp-protocol", "'grpcc'", "'grpc'"]),
    "otlp-temporality": (["--otlp-temporality", "deltas"], {}, None, ["--otlp-temporality", "'deltas'"]),
    "ifname-slash": (["--interface", "eth/0"], {}, None, ["--interface", "'eth/0'"]),
    "ifname-long": (
        ["--interface", "averyveryverylongname"],
        {},
        None,
        ["--interface", "'averyveryverylongname'"],
    ),
    "ifname-dots": (["--interface", "eth0", "--interface", ".."], {}, None, ["--interface", "'..'"]),
    "ifname-twice": (["--interface", "eth0,eth0"], {}, None, ["--interface", "'eth0'", "twice"]),
    "netns-relative": (["--netns", "proc/1/ns/net"], {}, None, ["--netns", "'proc/1/ns/net'", "absolute"]),
    "netns-dot": (["--netns", "."], {}, None, ["--netns", "'.'"]),
    "ipv4-prefix": (["--ipv4-prefix", "33"], {}, None, ["--ipv4-prefix", "0 to 32", "'33'"]),
    "ipv6-prefix": (["--ipv6-prefix", "x"], {}, None, ["--ipv6-prefix", "'x'"]),
    "max-series": (["--max-series", "0"], {}, None, ["--max-series", "'0'"]),
    "slots-not-pow2": (["--start-slots", "1000"], {}, None, ["--start-slots", "power of two", "'1000'"]),
    "slots-small": (["--start-slots", "512"], {}, None, ["--start-slots", "'512'"]),
    "hooks": (["--hooks", "kprob"], {}, None, ["--hooks", "'kprob'", "did you mean 'kprobe'"]),
    "log-level": (["--log-level", "verbose"], {}, None, ["--log-level", "'verbose'"]),
    # environment
    "env-listen": ([], {"NETLAT_LISTEN": "abc"}, None, ["NETLAT_LISTEN: expected HOST:PORT, got 'abc'"]),
    "env-interval": ([], {"NETLAT_INTERVAL": "5s"}, None, ["NETLAT_INTERVAL", "'5s'"]),
    "env-bool": ([], {"NETLAT_ADDRESS_LABELS": "maybe"}, None, ["NETLAT_ADDRESS_LABELS", "'maybe'"]),
    "env-stage": ([], {"NETLAT_STAGES": "backlog,nope"}, None, ["NETLAT_STAGES", "'nope'"]),
    "env-interface-blank": (
        [],
        {"NETLAT_INTERFACES": "eth0, "},
        None,
        ["NETLAT_INTERFACES", "empty", "'eth0, '"],
    ),
    "env-config-missing": (
        [],
        {"NETLAT_CONFIG": "/nonexistent/n.yaml"},
        None,
        ["NETLAT_CONFIG", "/nonexistent/n.yaml"],
    ),
    "env-log-level": ([], {"NETLAT_LOG_LEVEL": "loud"}, None, ["NETLAT_LOG_LEVEL", "'loud'"]),
    "env-otlp": ([], {"NETLAT_OTLP_ENDPOINT": "ftp://x"}, None, ["NETLAT_OTLP_ENDPOINT", "'ftp://x'"]),
    # config file
    "yaml-unknown-key": (
        [],
        {},
        "stagess: [stack]\n",
        ["FILE: unknown key 'stagess'", "did you mean 'stages'"],
    ),
    "yaml-unknown-nested": (
        [],
        {},
        "otlp: {endpointt: x}\n",
        ["FILE: unknown key 'otlp.endpointt'", "'otlp.endpoint'"],
    ),
    "yaml-top-list": ([], {}, "- a\n- b\n", ["FILE: expected a mapping", "['a', 'b']"]),
    "yaml-syntax": ([], {}, "interval: 5\nstages: [stack\n", ["FILE: line 3", "invalid YAML"]),
    "yaml-bool-string": (
        [],
        {},
        "addresses: {enabled: 'true'}\n",
        ["FILE: addresses.enabled", "'true'", "quotes"],
    ),
    "yaml-duplicate": ([], {}, "interval: 5\ninterval: 6\n", ["FILE: line 2", "duplicate key 'interval'"]),
    "yaml-int-string": ([], {}, "max_series: '100'\n", ["FILE: max_series", "'100'", "quotes"]),
    "yaml-int-float": ([], {}, "max_series: 10.5\n", ["FILE: max_series", "10.5"]),
    "yaml-list-type": ([], {}, "filter: {interfaces: 5}\n", ["FILE: filter.interfaces", "list", "5"]),
    "yaml-list-item": ([], {}, "stages: [stack, 5]\n", ["FILE: stages[1]", "expected a string", "5"]),
    "yaml-section-scalar": ([], {}, "otlp: http://x\n", ["FILE: otlp", "mapping", "'http://x'"]),
    "yaml-listen-int": ([], {}, "listen: 2112\n", ["FILE: listen", "HOST:PORT", "2112"]),
    "yaml-bucket-bool": ([], {}, "buckets: [1.0e-6, true]\n", ["FILE: buckets[1]", "true"]),
    "yaml-number-key": ([], {}, "1: x\n", ["FILE: unknown key 1"]),
    "yaml-custom-builtin": (
        [],
        {},
        "custom_stages:\n  - name: stack\n" + CUSTOM_OK,
        ["FILE: custom_stages[0].name", "built-in", "'stack'"],
    ),
    "yaml-custom-name": (
        [],
        {},
        "custom_stages:\n  - name: Bad-Name\n" + CUSTOM_OK,
        ["FILE: custom_stages[0].name", "'Bad-Name'"],
    ),
    "yaml-custom-twice": (
        [],
        {},
        "custom_stages:\n  - name: a\n" + CUSTOM_OK + "  - name: a\n" + CUSTOM_OK,
        ["FILE: custom_stages[1].name", "'a'"],
    ),
    "yaml-custom-tp": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: receive\n"
        "    start: {kind: tracepoint, target: netif_rx}\n    end: {kind: function, target: ip_rcv}\n",
        ["FILE: custom_stages[0].start.target", "GROUP:EVENT", "'netif_rx'"],
    ),
    "yaml-custom-isra": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: receive\n"
        "    start: {kind: function, target: ip_rcv.isra.0}\n    end: {kind: function, target: ip_rcv}\n",
        ["FILE: custom_stages[0].start.target", "'ip_rcv.isra.0'"],
    ),
    "yaml-custom-arg": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: receive\n"
        "    start: {kind: function, target: f, skb_arg: 6}\n    end: {kind: function, target: g}\n",
        ["FILE: custom_stages[0].start.skb_arg", "0 to 5", "6"],
    ),
    "yaml-custom-field-on-fn": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: receive\n"
        "    start: {kind: function, target: f, skb_field: skb}\n"
        "    end: {kind: function, target: g}\n",
        ["FILE: custom_stages[0].start.skb_field", "'skb'"],
    ),
    "yaml-custom-key": (
        [],
        {},
        "custom_stages:\n  - name: a\n    directon: receive\n",
        ["FILE: unknown key 'custom_stages[0].directon'", "did you mean 'custom_stages[0].direction'"],
    ),
    "yaml-custom-missing": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: receive\n    start: {kind: function, target: f}\n",
        ["FILE: custom_stages[0]", "missing key 'end'"],
    ),
    "yaml-custom-kind": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: receive\n"
        "    start: {kind: kprobe, target: f}\n    end: {kind: function, target: g}\n",
        ["FILE: custom_stages[0].start.kind", "'kprobe'"],
    ),
    "yaml-custom-same": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: receive\n"
        "    start: {kind: function, target: f}\n    end: {kind: function, target: f}\n",
        ["FILE: custom_stages[0].end", "differ", "'f'"],
    ),
    "yaml-custom-direction": (
        [],
        {},
        "custom_stages:\n  - name: a\n    direction: inbound\n" + CUSTOM_HOOKS,
        ["FILE: custom_stages[0].direction", "'inbound'"],
    ),
    "yaml-stage-not-custom": ([], {}, "stages: [mystage]\n", ["FILE: stages[0]", "'mystage'"]),
    "watch-count": (["--count", "0"], {}, None, ["--count", "'0'"]),
}


@pytest.mark.parametrize(("argv", "env", "yaml_text", "fragments"), list(BAD.values()), ids=list(BAD))
def test_bad_input_gives_one_line_naming_source_and_value(argv, env, yaml_text, fragments, config_file):
    command = "watch" if "--count" in argv else "run"
    path = ""
    if yaml_text is not None:
        path = config_file(yaml_text)
        argv = ["--config", path, *argv]
    with pytest.raises(ConfigError) as info:
        load(argv, env, command)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(fragments[0].replace("FILE", path).split(":")[0] if yaml_text is None else path)
    for fragment in fragments:
        assert fragment.replace("FILE", path) in message, message
    assert message.startswith(info.value.where + ": ")


def test_many_bad_inputs_are_covered():
    assert len(BAD) >= 25


def test_unreadable_config_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^--config: cannot read config file .*: Is a directory$"):
        load(["--config", str(tmp_path)])


def test_unknown_flag_is_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        parser_for("run").parse_args(["--intervall", "5"])
    assert info.value.code == 2
    assert "unrecognized arguments: --intervall" in capsys.readouterr().err
