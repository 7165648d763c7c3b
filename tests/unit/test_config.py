"""Configuration: precedence, defaults, parsing, and one-line errors that name their source."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

import otel_netlat.config as config_module
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
    assert STAGE_NAMES == (
        "backlog",
        "stack",
        "socket",
        "qdisc",
        "ip_rcv",
        "ipv6_rcv",
        "forward",
        "tcp_backlog",
        "tx_ring",
        "accept",
        "drops",
        "softirq",
    )


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


def test_latency_sample_from_each_source(config_file):
    assert load([]).latency_sample == 1
    assert load(["--latency-sample", "8"]).latency_sample == 8
    assert load([], {"NETLAT_LATENCY_SAMPLE": "64"}).latency_sample == 64
    assert load(["--config", config_file("latency_sample: 16\n")]).latency_sample == 16


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


def test_module_docstring_example_is_valid(tmp_path):
    """The example file in the package docstring (config/__init__.py) is what users copy: it must load."""
    example = config_module.__doc__.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(textwrap.dedent(example))
    cfg = load(["--config", str(path)])
    assert cfg.stages == ("backlog", "stack", "my_stage")
    assert cfg.custom_stages[0].end == CustomHook("function", "ip_rcv", skb_arg=0)


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
#
# Each bad input: (argv, env, YAML text or None, where the message must start, fragments it
# must contain: the offending value first). "FILE" stands for the config file's path.


def flag(*argv: str, got: str, also: tuple[str, ...] = ()):
    return (list(argv), {}, None, argv[0].split("=")[0], (got, *also))


def env(name: str, value: str, *also: str, got: str = ""):
    return ([], {name: value}, None, name, (got or repr(value), *also))


def yml(text: str, key: str, got: str, *also: str):
    return ([], {}, text, f"FILE: {key}" if key else "FILE", (got, *also))


def custom(start: str, end: str = "{kind: function, target: g}", direction: str = "receive") -> str:
    return f"custom_stages:\n  - name: a\n    direction: {direction}\n    start: {start}\n    end: {end}\n"


ONE_CUSTOM = custom("{kind: function, target: f}")

BAD = {
    "interval-negative": flag("--interval", "-1", got="'-1'", also=("must be a positive number of seconds",)),
    "interval-small": flag("--interval", "0.01", got="'0.01'", also=("0.05",)),
    "interval-large": flag("--interval=3601", got="'3601'", also=("3600",)),
    "interval-word": flag("--interval", "fast", got="'fast'"),
    "interval-nan": flag("--interval", "nan", got="'nan'"),
    "bucket-sub-ns": flag("--buckets", "1e-6,1.5e-9", got="'1.5e-9'", also=("whole nanoseconds",)),
    "bucket-order": flag("--buckets", "2e-6,1e-6", got="'1e-6' after '2e-6'"),
    "bucket-repeat": flag("--buckets", "1e-6,1e-6", got="'1e-6' after '1e-6'"),
    "bucket-negative": flag("--buckets=-1e-6", got="'-1e-6'", also=("positive",)),
    "bucket-empty-item": flag("--buckets", "1e-6,,2e-6", got="'1e-6,,2e-6'", also=("empty item",)),
    "bucket-too-many": flag("--buckets", ",".join(f"{k}e-6" for k in range(1, 66)), got="not 65"),
    "bucket-word": flag("--buckets", "1us", got="'1us'"),
    "stage-unknown": flag("--stages", "stak", got="'stak'", also=("did you mean 'stack'?",)),
    "stage-twice": flag("--stages", "stack,stack", got="'stack'", also=("twice",)),
    "stage-none": flag("--stages", "", got="''", also=("at least one stage",)),
    "listen-no-port": flag("--listen", "abc", got="'abc'", also=("expected HOST:PORT",)),
    "listen-bare-v6": flag("--listen", "::1:2112", got="'::1:2112'", also=("brackets",)),
    "listen-big-port": flag("--listen", "0.0.0.0:70000", got="'0.0.0.0:70000'", also=("65535",)),
    "listen-bad-v6": flag("--listen", "[zz]:80", got="'[zz]:80'"),
    "listen-no-host": flag("--listen", ":2112", got="':2112'", also=("[::]",)),
    "listen-bad-v4": flag("--listen", "300.1.1.1:80", got="'300.1.1.1:80'"),
    "otlp-no-scheme": flag("--otlp-endpoint", "collector:4317", got="'collector:4317'"),
    "otlp-protocol": flag("--otlp-protocol", "grpcc", got="'grpcc'", also=("did you mean 'grpc'?",)),
    "otlp-temporality": flag("--otlp-temporality", "deltas", got="'deltas'"),
    "otlp-interval": flag("--otlp-interval", "0", got="'0'"),
    "ifname-slash": flag("--interface", "eth/0", got="'eth/0'"),
    "ifname-long": flag("--interface", "averyveryverylongname", got="'averyveryverylongname'"),
    "ifname-dots": flag("--interface", "eth0", "--interface", "..", got="'..'"),
    "ifname-twice": flag("--interface", "eth0,eth0", got="'eth0'", also=("twice",)),
    "netns-relative": flag("--netns", "proc/1/ns/net", got="'proc/1/ns/net'", also=("absolute",)),
    "netns-dot": flag("--netns", ".", got="'.'"),
    "ipv4-prefix": flag("--ipv4-prefix", "33", got="'33'", also=("0 to 32",)),
    "ipv6-prefix": flag("--ipv6-prefix", "x", got="'x'"),
    "max-series": flag("--max-series", "0", got="'0'"),
    "latency-sample": flag("--latency-sample", "0", got="'0'", also=("1 to 65536",)),
    "slots-not-pow2": flag("--start-slots", "1000", got="'1000'", also=("power of two",)),
    "slots-small": flag("--start-slots", "512", got="'512'"),
    "hooks": flag("--hooks", "kprob", got="'kprob'", also=("did you mean 'kprobe'?",)),
    "log-level": flag("--log-level", "verbose", got="'verbose'"),
    "watch-count": flag("--count", "0", got="'0'"),
    "env-listen": env("NETLAT_LISTEN", "abc", "NETLAT_LISTEN: expected HOST:PORT, got 'abc'"),
    "env-interval": env("NETLAT_INTERVAL", "5s"),
    "env-bool": env("NETLAT_ADDRESS_LABELS", "maybe"),
    "env-stage": env("NETLAT_STAGES", "backlog,nope", got="'nope'"),
    "env-interface-blank": env("NETLAT_INTERFACES", "eth0, ", "empty item"),
    "env-config-missing": env("NETLAT_CONFIG", "/nonexistent/n.yaml", "No such file"),
    "env-log-level": env("NETLAT_LOG_LEVEL", "loud"),
    "env-otlp": env("NETLAT_OTLP_ENDPOINT", "ftp://x"),
    "env-slots": env("NETLAT_START_SLOTS", "64k"),
    "yaml-unknown-key": yml("stagess: [stack]\n", "", "'stagess'", "did you mean 'stages'?", "known: stages"),
    "yaml-unknown-nested": yml("otlp: {endpointt: x}\n", "", "'otlp.endpointt'", "'otlp.endpoint'"),
    "yaml-top-list": yml("- a\n- b\n", "", "['a', 'b']", "mapping"),
    "yaml-syntax": yml("interval: 5\nstages: [stack\n", "line 3, column 1", "invalid YAML"),
    "yaml-duplicate": yml("interval: 5\ninterval: 6\n", "line 2, column 1", "duplicate key 'interval'"),
    "yaml-bool-string": yml(
        "addresses: {enabled: 'true'}\n", "addresses.enabled", "'true'", "without quotes"
    ),
    "yaml-int-string": yml("max_series: '100'\n", "max_series", "'100'", "without quotes"),
    "yaml-int-float": yml("max_series: 10.5\n", "max_series", "10.5"),
    "yaml-list-type": yml("filter: {interfaces: 5}\n", "filter.interfaces", "got 5", "list"),
    "yaml-list-item": yml("stages: [stack, 5]\n", "stages[1]", "got 5", "expected a string"),
    "yaml-section-scalar": yml("otlp: http://x\n", "otlp", "'http://x'", "mapping"),
    "yaml-listen-int": yml("listen: 2112\n", "listen", "got 2112", "HOST:PORT"),
    "yaml-bucket-bool": yml("buckets: [1.0e-6, true]\n", "buckets[1]", "got true"),
    "yaml-number-key": yml("1: x\n", "", "unknown key 1"),
    "yaml-stage-not-custom": yml("stages: [mystage]\n", "stages[0]", "'mystage'"),
    "custom-builtin": yml(ONE_CUSTOM.replace("name: a", "name: stack"), "custom_stages[0].name", "'stack'"),
    "custom-name": yml(
        ONE_CUSTOM.replace("name: a", "name: Bad-Name"), "custom_stages[0].name", "'Bad-Name'"
    ),
    "custom-twice": yml(ONE_CUSTOM + ONE_CUSTOM.partition("\n")[2], "custom_stages[1].name", "'a'"),
    "custom-tp": yml(
        custom("{kind: tracepoint, target: netif_rx}"),
        "custom_stages[0].start.target",
        "'netif_rx'",
        "GROUP:EVENT",
    ),
    "custom-isra": yml(
        custom("{kind: function, target: ip_rcv.isra.0}"), "custom_stages[0].start.target", "'ip_rcv.isra.0'"
    ),
    "custom-arg": yml(
        custom("{kind: function, target: f, skb_arg: 6}"), "custom_stages[0].start.skb_arg", "got 6"
    ),
    "custom-field-on-fn": yml(
        custom("{kind: function, target: f, skb_field: skb}"), "custom_stages[0].start.skb_field", "'skb'"
    ),
    "custom-arg-on-tp": yml(
        custom("{kind: tracepoint, target: 'net:netif_rx', skb_arg: 1}"),
        "custom_stages[0].start.skb_arg",
        "got 1",
    ),
    "custom-key": yml(
        "custom_stages:\n  - name: a\n    directon: receive\n",
        "",
        "'custom_stages[0].directon'",
        "did you mean 'custom_stages[0].direction'?",
    ),
    "custom-missing": yml(ONE_CUSTOM.rpartition("    end:")[0], "custom_stages[0]", "missing key 'end'"),
    "custom-kind": yml(custom("{kind: kprobe, target: f}"), "custom_stages[0].start.kind", "'kprobe'"),
    "custom-same": yml(custom("{kind: function, target: g}"), "custom_stages[0].end", "'g'", "differ"),
    "custom-direction": yml(
        custom("{kind: function, target: f}", direction="inbound"), "custom_stages[0].direction", "'inbound'"
    ),
    "custom-not-list": yml("custom_stages: {name: a}\n", "custom_stages", "{'name': 'a'}", "list"),
}


@pytest.mark.parametrize(
    ("argv", "env", "yaml_text", "where", "fragments"), list(BAD.values()), ids=list(BAD)
)
def test_bad_input_gives_one_line_naming_source_and_value(
    argv, env, yaml_text, where, fragments, config_file
):
    path = ""
    if yaml_text is not None:
        path = config_file(yaml_text)
        argv = ["--config", path, *argv]
    with pytest.raises(ConfigError) as info:
        load(argv, env, "watch" if "--count" in argv else "run")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(where.replace("FILE", path) + ": "), message
    for fragment in fragments:
        assert fragment.replace("FILE", path) in message, message


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
