"""Fuzzed configuration: no flag, variable or YAML file makes ``otel-netlat`` crash.

Hypothesis generates command lines, ``NETLAT_*`` and ``OTEL_*`` environments and YAML files
near the valid ones (valid values, mutations of them, hostile junk) and runs each through
the path the CLI itself takes: :func:`otel_netlat.commands.cli.main` in process, argparse
and ``load_config`` included, with the command swapped for a dry run (for ``run`` in the
OTEL test: the export side's start-up, which reads ``OTEL_*``) so no BPF is loaded. Each
case must end in exit 0, or exit 2 with one stderr line naming where the bad value came
from; any exception fails the case. Real subprocess runs prove the same of the process.

Runs are reproducible (derandomized, no example database) and each test counts the cases
it ran, so a strategy that stops producing them fails instead of passing quietly.
"""

from __future__ import annotations

import functools
import io
import os
import re
import resource
import shlex
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_netlat.commands import cli
from otel_netlat.commands.run import export_settings
from otel_netlat.config import STAGE_NAMES, Config
from otel_netlat.config.settings import (
    COMMANDS,
    CONFIG_ENV,
    HOOK_MODES,
    LOG_LEVELS,
    SETTINGS,
    YAML_KEYS,
    Setting,
)
from otel_netlat.export.otlp_env import resolve_otlp
from otel_netlat.export.otlp_exporter import build_exporter
from otel_netlat.export.provider import build_resource
from otel_netlat.export.settings import ExportSettings, TelemetryError
from tests.support.process import REPO

#: Generated cases per test (beside the hand-written ones below): 1,050 in all.
CASES = {"flags": 280, "env": 180, "yaml": 220, "yaml_text": 180, "mixed": 80, "otel": 110}


def fuzz(cases: int) -> settings:
    """Reproducible in CI: a fixed seed, no example database, no per-case deadline."""
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------- running main()


@dataclass
class Outcome:
    code: int
    err: str
    config: Config | None  # what the command got (exit 0)


def _record(config: Config) -> int:
    return 0


def run_main(
    argv: Sequence[str], env: Mapping[str, str], dry_run: Callable[[Config], int] = _record
) -> Outcome:
    """``otel-netlat ARGV`` in process, ``env`` its whole environment, the command a dry run."""
    got: list[Config] = []

    def command(config: Config) -> int:
        got.append(config)
        return dry_run(config)

    err = io.StringIO()
    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch.multiple(cli, cmd_run=command, cmd_check=command, cmd_watch=command, cmd_slow=command),
        redirect_stdout(io.StringIO()),
        redirect_stderr(err),
    ):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:  # argparse: --help (0) or a usage error (2)
            code = e.code
    return Outcome(code, err.getvalue(), got[0] if got else None)


USAGE_ERROR = re.compile(r"otel-netlat(?: \w+)?: error: .* \(see otel-netlat(?: \w+)? --help\)")
ERROR_PREFIX = "otel-netlat: error: "


def assert_clean(out: Outcome, sources: Iterable[str], argv: Sequence[str] = ()) -> None:
    """Exit 0, or exit 2 and one stderr line: a setting's error starts with its source (a flag,
    a variable, the file), an argparse error quotes the argument it refuses."""
    assert out.code in (0, 2), out
    if out.code == 0:
        return
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    line = lines[0]
    if USAGE_ERROR.fullmatch(line):
        detail = line.partition(": error: ")[2]
        tokens = [t for a in argv for t in (a, a.partition("=")[0], shlex.quote(a), repr(a)) if t]
        assert any(t in detail for t in tokens), (line, argv)
        return
    assert line.startswith(ERROR_PREFIX), line
    message = line.removeprefix(ERROR_PREFIX)
    assert any(message.startswith(f"{s}:") for s in sources), (line, sorted(sources))


def named_flags(argv: Sequence[str], command: str) -> set[str]:
    """Every flag an argv token may stand for (argparse takes unambiguous prefixes)."""
    options = {s.flag for s in SETTINGS if s.flag and command in s.commands} | {"--config"}
    named: set[str] = set()
    for token in argv:
        name = token.partition("=")[0]
        if name.startswith("--"):
            named |= {o for o in options if o.startswith(name) or f"--no-{o[2:]}".startswith(name)}
    return named


# --------------------------------------------------------------------------- values

# What argv and the environment can hold: no NUL; bytes that are not UTF-8 arrive as
# surrogate escapes (U+DC80-U+DCFF), the only surrogates they can carry.
OS_CHARS = st.one_of(
    st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
)
HOSTILE = (
    *("", " ", ",", ",,", "-", "--", "-1", "0", "+0", "00", "-0", "nan", "inf", "-inf", "1e999999"),
    *("1e-999999999999999999", "1e-10", "0x10", "1_000", "\u0663", "\udcff", "1" * 5000, "9" * 40),
    *("..", ".", "/", "a" * 300, "\n", "\t5", "5\n", "true", "null", "~", "'", '"', "[", "{"),
    *("[::1", "http://[", "http://[zz]:80", "http://a:99999", ":", "::", "[::]:", "0.0.0.0:", "a:b:c"),
    *("%s", "{}", "\\", "\u00e9", "\U0001f600", "\u2028", "\x85", "\x1b[31m", "5 s", "1e-6,", ",1e-6"),
)
JUNK = st.one_of(st.sampled_from(HOSTILE), st.text(OS_CHARS, max_size=24))
PIECE = st.one_of(st.sampled_from(",:.-ex /[]09\n\udcff"), st.text(OS_CHARS, min_size=1, max_size=3))


def _names(choices: Sequence[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(choices), min_size=1, max_size=4, unique=True).map(",".join)


def _seconds(low: str, high: str) -> st.SearchStrategy[str]:
    exact = st.decimals(Decimal(low), Decimal(high), places=3).map(str)
    return st.one_of(exact, st.sampled_from(["5", "1", "0.5", "60", "1e1", " 10 ", "3600", "0.05"]))


def _bounds(ns: list[int]) -> str:
    return ",".join(f"{n}e-9" if n % 2 else str(Decimal(n).scaleb(-9)) for n in sorted(ns))


#: A valid value of each setting, as text (a flag or a variable).
VALID_TEXT: dict[str, st.SearchStrategy[str]] = {
    "stages": _names(STAGE_NAMES),
    "interval": _seconds("0.05", "3600"),
    "bounds_ns": st.lists(st.integers(1, 3600 * 10**9), min_size=1, max_size=8, unique=True).map(_bounds),
    "listen": st.builds(
        "{}:{}".format,
        st.sampled_from(["0.0.0.0", "127.0.0.1", "localhost", "[::]", "[::1]", "node-1.cluster.local"]),
        st.integers(0, 65535),
    ),
    "otlp_endpoint": st.sampled_from(
        ["http://127.0.0.1:4317", "https://localhost:4318", "http://[::1]:4317/x"]
    ),
    "otlp_protocol": st.sampled_from(["grpc", "http/protobuf", "GRPC", " Http/Protobuf "]),
    "otlp_temporality": st.sampled_from(["cumulative", "delta", "Delta"]),
    "otlp_interval": _seconds("0.05", "3600"),
    "interfaces": _names(["eth0", "lo", "veth-a1", "ens3", "br.100", "\udcff"]),
    "netns": _names(["blue", "red", "ns-1", "/proc/1/ns/net", "/run/netns/green"]),
    "ipv4_prefix": st.integers(0, 32).map(str),
    "ipv6_prefix": st.integers(0, 128).map(str),
    "max_series": st.integers(1, 100000).map(str),
    "series_ttl": st.integers(1, 7 * 86400).map(str),
    "start_slots": st.integers(10, 22).map(lambda k: str(1 << k)),
    "hooks": st.sampled_from(HOOK_MODES),
    "log_level": st.sampled_from([*LOG_LEVELS, "DEBUG", " Info "]),
    "count": st.integers(1, 100).map(str),
}
BOOL_TEXT = st.sampled_from(["true", "false", "1", "0", "yes", "no", "TRUE", " yes "])
#: A setting this file does not know yet (one added later): numbers and junk still apply.
ANY_NUMBER_TEXT = st.one_of(st.integers(-5, 10**6).map(str), st.sampled_from(["300", "0.5", "1e3"]))

MUTATIONS: tuple[Callable[[str, int, str], str], ...] = (
    lambda t, i, p: t[:i] + p + t[i:],  # insert
    lambda t, i, p: t[:i] + t[i + 1 :],  # delete
    lambda t, i, p: t[:i],  # truncate
    lambda t, i, p: t[:i] + p + t[i + 1 :],  # replace
    lambda t, i, p: f"{t},{t}",  # repeat an item
    lambda t, i, p: t.upper(),
    lambda t, i, p: f" {t} ",
    lambda t, i, p: "-" + t,
    lambda t, i, p: t * 40,
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid value, edited once: the inputs a parser is most likely to get wrong."""
    text = draw(base)
    mutate = draw(st.sampled_from(MUTATIONS))
    return mutate(text, draw(st.integers(0, len(text))), draw(PIECE))


@functools.cache  # one strategy per setting: building strategies is most of Hypothesis's cost
def text_value(s: Setting) -> st.SearchStrategy[str]:
    """A flag or variable value for ``s``: valid twice as often as mutated, then junk."""
    valid = BOOL_TEXT if s.switch else VALID_TEXT.get(s.field, ANY_NUMBER_TEXT)
    return st.one_of(valid, valid, mutated(valid), JUNK)


# --------------------------------------------------------------------------- command lines

STRAY = st.one_of(
    st.sampled_from(("--bogus", "-x", "--", "-", "--int", "--no-", "run", "5", "", "--config", "--help")),
    JUNK,
)


@st.composite
def _flag_use(draw: st.DrawFn, s: Setting, abbreviate: bool) -> list[str]:
    flag = s.flag
    assert flag is not None
    if abbreviate and draw(st.integers(0, 7)) == 0:
        flag = flag[: draw(st.integers(3, len(flag)))]
    if s.switch:
        spelt = draw(st.sampled_from((flag, f"--no-{flag[2:]}", "")))
        return [spelt or f"{flag}={draw(BOOL_TEXT)}"]  # "": --flag=VALUE, which a switch refuses
    value = draw(text_value(s))
    forms = ("separate", "separate", "equals", "missing") if abbreviate else ("separate",)
    form = draw(st.sampled_from(forms))
    return {"separate": [flag, value], "equals": [f"{flag}={value}"], "missing": [flag]}[form]


@functools.cache
def flag_use(s: Setting, abbreviate: bool = True) -> st.SearchStrategy[list[str]]:
    """``s`` on a command line: ``--flag V``, ``--flag=V``, an abbreviation, or no value."""
    return _flag_use(s, abbreviate)


@functools.cache
def flag_settings(command: str) -> st.SearchStrategy[Setting]:
    return st.sampled_from([s for s in SETTINGS if s.flag and command in s.commands])


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(COMMANDS))
    argv = [command]
    for s in draw(st.lists(flag_settings(command), max_size=5)):
        argv += draw(flag_use(s))
    if draw(st.integers(0, 5)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(STRAY))
    return argv


def test_fuzzed_flags():
    outcomes: Counter[int] = Counter()

    @fuzz(CASES["flags"])
    @given(command_lines())
    def case(argv: list[str]) -> None:
        out = run_main(argv, {})
        assert_clean(out, named_flags(argv, argv[0]) if argv[0] in COMMANDS else (), argv)
        outcomes[out.code] += 1

    case()
    assert_counted(outcomes, CASES["flags"])


def assert_counted(outcomes: Counter[int], cases: int) -> None:
    """Every generated case ran, and both outcomes were common enough to mean something."""
    assert sum(outcomes.values()) >= cases, outcomes
    assert min(outcomes[0], outcomes[2]) >= cases // 10, outcomes


# --------------------------------------------------------------------------- environment

ENV_SETTINGS = st.sampled_from([s for s in SETTINGS if s.env])
ENV_TYPOS = st.one_of(
    st.sampled_from(("NETLAT_INTERVALS", "NETLAT_STAGE", "NETLAT_", "NETLAT_VM", "NETLAT_COLLECTOR_X")),
    st.from_regex(r"NETLAT_[A-Za-z_]{0,12}", fullmatch=True),
)
CONFIG_PATHS = st.sampled_from(("", " ", "/nonexistent/netlat.yaml", "/", "/dev/null", "relative.yaml"))


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    """``NETLAT_*`` settings, now and then a misspelt one (a warning) or ``NETLAT_CONFIG``."""
    env = {s.env: draw(text_value(s)) for s in draw(st.lists(ENV_SETTINGS, max_size=5, unique=True))}
    if draw(st.integers(0, 4)) == 0:
        env[draw(ENV_TYPOS)] = draw(JUNK)
    if draw(st.integers(0, 9)) == 0:
        env[CONFIG_ENV] = draw(CONFIG_PATHS)
    return env


def test_fuzzed_environment():
    outcomes: Counter[int] = Counter()

    @fuzz(CASES["env"])
    @given(st.sampled_from(COMMANDS), environments())
    def case(command: str, env: dict[str, str]) -> None:
        out = run_main([command], env)
        assert_clean(out, env)
        outcomes[out.code] += 1

    case()
    assert_counted(outcomes, CASES["env"])


# --------------------------------------------------------------------------- YAML files

YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.text(OS_CHARS, max_size=6),
    st.dates(),
)
YAML_DATA = st.recursive(
    YAML_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4),
    ),
    max_leaves=8,
)
SECONDS = st.one_of(st.floats(0.05, 3600), st.integers(1, 3600))
KEY_SETTINGS = {s.key: s for s in SETTINGS if s.key}
#: A valid value of each file key as YAML holds it (lists, numbers, booleans).
VALID_NATIVE: dict[str, st.SearchStrategy[object]] = {
    "stages": st.lists(st.sampled_from(STAGE_NAMES), min_size=1, max_size=4, unique=True),
    "interval": SECONDS,
    "otlp.interval": SECONDS,
    "buckets": st.lists(st.integers(1, 3600 * 10**9), min_size=1, max_size=8, unique=True).map(
        lambda ns: [n / 1e9 for n in sorted(ns)]  # repr of n/1e9 is n e-9 exactly: whole ns
    ),
    "filter.interfaces": st.lists(
        st.sampled_from(("eth0", "lo", "veth-a1")), min_size=1, max_size=3, unique=True
    ),
    "filter.netns": st.lists(
        st.sampled_from(("blue", "/proc/1/ns/net")), min_size=1, max_size=2, unique=True
    ),
    "addresses.enabled": st.booleans(),
    "kubernetes.pod_attribution": st.booleans(),
    "addresses.ipv4_prefix": st.integers(0, 32),
    "addresses.ipv6_prefix": st.integers(0, 128),
    "max_series": st.integers(1, 100000),
    "series_ttl": st.integers(1, 7 * 86400),
    "start_slots": st.integers(10, 22).map(lambda k: 1 << k),
}

TRACEPOINT_HOOK = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(("tracepoint", "Tracepoint")),
        "target": st.sampled_from(("net:netif_rx", "skb:kfree_skb", "netif_rx", "a:b:c", ":x")),
    },
    optional={"skb_field": st.sampled_from(("skbaddr", "skb", "1x", "")), "skb_arg": st.integers(-1, 7)},
)
FUNCTION_HOOK = st.fixed_dictionaries(
    {"kind": st.just("function"), "target": st.sampled_from(("ip_rcv", "tcp_v4_rcv", "ip_rcv.isra.0", "9f"))},
    optional={"skb_arg": st.one_of(st.integers(-1, 7), YAML_SCALARS), "skb_field": st.just("skb")},
)
HOOK = st.one_of(TRACEPOINT_HOOK, FUNCTION_HOOK, FUNCTION_HOOK, YAML_DATA)
STAGE_FIELDS = {
    "name": st.one_of(
        st.sampled_from(("mine", "my_stage", "stack", "Bad-Name", "x" * 40)), JUNK, YAML_SCALARS
    ),
    "direction": st.sampled_from(("receive", "transmit", "TRANSMIT", "inbound")),
    "start": HOOK,
    "end": HOOK,
}
CUSTOM_STAGE = st.one_of(
    st.fixed_dictionaries(STAGE_FIELDS, optional={"note": YAML_DATA}),
    st.fixed_dictionaries({}, optional=STAGE_FIELDS),  # keys missing
)


@functools.cache
def file_value(key: str) -> st.SearchStrategy[object]:
    """A value for file key ``key``: valid (as YAML or as text), mutated text, or any YAML data."""
    if key == "custom_stages":
        return st.one_of(st.lists(CUSTOM_STAGE, max_size=3), YAML_DATA)
    s = KEY_SETTINGS[key]
    native = VALID_NATIVE.get(key, YAML_SCALARS)
    return st.one_of(native, native, text_value(s), YAML_DATA)


KEY_TYPOS = st.one_of(
    st.sampled_from(("stagess", "Interval", "otlp.endpoint", "custom_stage", "", "<<", "? x")),
    YAML_SCALARS.filter(lambda k: not isinstance(k, float)),  # a NaN key never equals itself
)
SECTIONS = tuple(dict.fromkeys(k.partition(".")[0] for k in YAML_KEYS if "." in k))


@st.composite
def yaml_documents(draw: st.DrawFn) -> object:
    """A config file's data: known keys (sections nested) with values, now and then junk."""
    if draw(st.integers(0, 11)) == 0:
        return draw(YAML_DATA)  # a file that is not a mapping of settings
    doc: dict[object, object] = {}
    for key in draw(st.lists(st.sampled_from(YAML_KEYS), max_size=6, unique=True)):
        section, dot, sub = key.partition(".")
        value = draw(file_value(key))
        if not dot:
            doc[key] = value
        elif isinstance(doc.setdefault(section, {}), dict):
            doc[section][sub] = value  # type: ignore[index]
    if draw(st.integers(0, 5)) == 0:
        doc[draw(KEY_TYPOS)] = draw(YAML_DATA)
    if draw(st.integers(0, 7)) == 0:
        doc[draw(st.sampled_from(SECTIONS))] = draw(YAML_DATA)
    return doc


def dump(doc: object, flow: bool, unicode: bool) -> str:
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)


def write(path: Path, text: str) -> str:
    """``text`` as the file; surrogate escapes become the raw (not UTF-8) bytes they stand for."""
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return str(path)


def test_fuzzed_yaml_files(tmp_path: Path):
    outcomes: Counter[int] = Counter()
    path = tmp_path / "netlat.yaml"

    @fuzz(CASES["yaml"])
    @given(st.sampled_from(COMMANDS), yaml_documents(), st.booleans(), st.booleans())
    def case(command: str, doc: object, flow: bool, unicode: bool) -> None:
        out = run_main([command, "--config", write(path, dump(doc, flow, unicode))], {})
        assert_clean(out, [str(path), "--config"])
        outcomes[out.code] += 1

    case()
    assert_counted(outcomes, CASES["yaml"])


YAML_TOKENS = (
    *("interval", "stages", "buckets", "otlp", "endpoint", "filter", "custom_stages", "name", "start"),
    *(":", ": ", "\n", "  ", "- ", "[", "]", "{", "}", ", ", "&a ", "*a", "&b ", "*b", "*zz", "<<: ", "? "),
    *(
        "!!int ",
        "!!float ",
        "!!bool ",
        "!!str ",
        "!!timestamp ",
        "!!binary ",
        "!!set ",
        "!!omap ",
        "!!pairs ",
    ),
    *("!!map ", "!!seq ", "!!null ", "!!python/object:os.system ", "!local ", "!<tag:x> ", "| ", "> ", "'"),
    *('"', "# c", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\t", "0x", "0o7", "0b1", "1e-6"),
    *("1.5", "-1", "5", "1_000", "1:30", ".inf", ".nan", "~", "null", "yes", "on", "2024-02-30"),
    *(
        "2024-01-01T25:00:00",
        '"\\x00"',
        '"\\ud800"',
        "\x00",
        "\x85",
        "\ufeff",
        "\udcff",
        "9" * 5000,
        "0x" + "f" * 5000,
    ),
)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """YAML-ish text: a soup of tokens, or a generated file with tokens spliced in."""
    token = st.sampled_from(YAML_TOKENS)
    if draw(st.booleans()):
        return "".join(draw(st.lists(st.one_of(token, st.text(max_size=4)), max_size=30)))
    text = dump(draw(yaml_documents()), draw(st.booleans()), True)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(token) + text[i + draw(st.integers(0, 3)) :]
    return text


def test_fuzzed_yaml_text(tmp_path: Path):
    outcomes: Counter[int] = Counter()
    path = tmp_path / "netlat.yaml"

    @fuzz(CASES["yaml_text"])
    @given(yaml_texts())
    def case(text: str) -> None:
        out = run_main(["run", "--config", write(path, text)], {})
        assert_clean(out, [str(path), "--config"])
        outcomes[out.code] += 1

    case()
    assert sum(outcomes.values()) >= CASES["yaml_text"], outcomes
    assert outcomes[2] >= CASES["yaml_text"] // 4, outcomes  # mostly broken files, by design


# --------------------------------------------------------------------------- all three at once


@st.composite
def mixed_inputs(draw: st.DrawFn) -> tuple[list[str], dict[str, str], object]:
    """Flags (spelt in full, one use each), variables and a file, all for one command."""
    command = draw(st.sampled_from(COMMANDS))
    argv = [command]
    for s in draw(st.lists(flag_settings(command), max_size=3, unique_by=lambda s: s.field)):
        argv += draw(flag_use(s, abbreviate=False))
    return argv, draw(environments()), draw(yaml_documents())


def expected_source(s: Setting, argv: Sequence[str], env: Mapping[str, str], doc: object, path: str) -> str:
    """Where ``s`` must come from when every input is valid: the highest source that gives it."""
    spelt = (s.flag, f"--no-{(s.flag or '--')[2:]}")
    if s.flag and argv[0] in s.commands and any(a in spelt or a.startswith(f"{s.flag}=") for a in argv[1:]):
        return s.flag
    if s.env and env.get(s.env):
        return s.env
    section, dot, sub = (s.key or "").partition(".")
    held = doc.get(section) if isinstance(doc, dict) else None
    if s.key and (held.get(sub) if dot and isinstance(held, dict) else None if dot else held) is not None:
        return f"{path}: {s.key}"
    return "default"


def test_fuzzed_flags_environment_and_file_together(tmp_path: Path):
    """The error names one of the sources given; a valid mix takes each setting from the highest."""
    outcomes: Counter[int] = Counter()
    path = tmp_path / "netlat.yaml"

    @fuzz(CASES["mixed"])
    @given(mixed_inputs())
    def case(inputs: tuple[list[str], dict[str, str], object]) -> None:
        argv, env, doc = inputs
        file = write(path, dump(doc, False, True))
        out = run_main([*argv, "--config", file], env)
        assert_clean(out, [*named_flags(argv, argv[0]), *env, file], argv)
        if out.config is not None:
            for s in SETTINGS:
                assert out.config.source_of(s.field) == expected_source(s, argv, env, doc, file), s.field
        outcomes[out.code] += 1

    case()
    assert sum(outcomes.values()) >= CASES["mixed"], outcomes
    assert min(outcomes[0], outcomes[2]) >= CASES["mixed"] // 20, outcomes


# --------------------------------------------------------------------------- OTEL_* variables


def export_dry_run(config: Config) -> int:
    """``run``'s start-up before the BPF load, minus binding the port: the OTLP settings (the
    ``OTEL_*`` the agent reads), the SDK exporter (it reads the rest of OTEL_EXPORTER_OTLP_*)
    and the resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME). Nothing connects."""
    otlp = resolve_otlp(export_settings(config))
    if otlp is not None:
        build_exporter(otlp).shutdown()
    build_resource()
    return 0


def _otel(*values: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(values), mutated(st.sampled_from(values)), JUNK)


# Endpoints stay on loopback however mutated (and the exporters connect lazily: never here).
ENDPOINTS = st.one_of(
    st.sampled_from(("http://127.0.0.1:4317", "127.0.0.1:4317", "http://[::1]:4317", "localhost", "", " ")),
    st.sampled_from(("http://127.0.0.1:99999", "http://[::1", "grpc://127.0.0.1:4317", "https://[::1]:x")),
    mutated(st.sampled_from(("http://127.0.0.1:4317", "https://[::1]:4318/v1/metrics"))),
)
FILES = ("/nonexistent.pem", "/dev/null", "/etc/hostname", "/", "")
OTEL_VARIABLES: dict[str, st.SearchStrategy[str]] = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINTS,
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": ENDPOINTS,
    "OTEL_EXPORTER_OTLP_PROTOCOL": _otel("grpc", "http/protobuf", "HTTP/PROTOBUF", "http/json", "http"),
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": _otel("grpc", "http/protobuf", "grpc "),
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": _otel("cumulative", "delta", "lowmemory", "Delta"),
    "OTEL_METRIC_EXPORT_INTERVAL": _otel("15000", "1000", "0.5", "0", "-1", "nan", "inf", "1e300"),
    "OTEL_EXPORTER_OTLP_TIMEOUT": _otel("10", "0.5", "-1", "0", "1e400"),
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": _otel("10", "10000"),
    "OTEL_EXPORTER_OTLP_COMPRESSION": _otel("gzip", "deflate", "none", "zstd"),
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": _otel("gzip", "none"),
    "OTEL_EXPORTER_OTLP_HEADERS": _otel("a=b", "a", "=", "a=b,c=%zz", "api-key=x y", "a=b,,"),
    "OTEL_EXPORTER_OTLP_INSECURE": _otel("true", "false", "maybe"),
    "OTEL_EXPORTER_OTLP_CERTIFICATE": st.sampled_from(FILES),
    "OTEL_EXPORTER_OTLP_CLIENT_KEY": st.sampled_from(FILES),
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": st.sampled_from(FILES),
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": _otel(
        "explicit_bucket_histogram", "base2_exponential_bucket_histogram", "bogus"
    ),
    "OTEL_RESOURCE_ATTRIBUTES": _otel("k=v", "k", "=v", "a=b,c", "x=%zz", "service.name=a,a=b=c"),
    "OTEL_SERVICE_NAME": _otel("netlat", ""),
    "OTEL_SDK_DISABLED": _otel("true", "false", "TRUE"),
}
OTLP_FLAGS = [s for s in SETTINGS if s.field.startswith("otlp_")]
#: Export-side errors whose source is the command's setting (a flag or the file's key, as
#: the export layer sees it), or the SDK's own set-up.
UNNAMED_EXPORT_ERRORS = ("OTLP temporality: ", "cannot set up the OTLP exporter: ")


@st.composite
def otel_inputs(draw: st.DrawFn) -> tuple[list[str], dict[str, str]]:
    names = draw(st.lists(st.sampled_from(sorted(OTEL_VARIABLES)), max_size=6, unique=True))
    env = {name: draw(OTEL_VARIABLES[name]) for name in names}
    if draw(st.booleans()):  # most cases export: that is when the OTEL_* are read
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:4317"
    argv = ["run"]
    for s in draw(st.lists(st.sampled_from(OTLP_FLAGS), max_size=2, unique=True)):
        argv += [s.flag or "", draw(VALID_TEXT[s.field])]
    return argv, env


def test_fuzzed_otel_environment():
    outcomes: Counter[int] = Counter()

    @fuzz(CASES["otel"])
    @given(otel_inputs())
    def case(inputs: tuple[list[str], dict[str, str]]) -> None:
        argv, env = inputs
        out = run_main(argv, env, export_dry_run)
        message = out.err.removeprefix(ERROR_PREFIX)
        if out.code == 2 and message.startswith(UNNAMED_EXPORT_ERRORS):
            assert len(out.err.splitlines()) == 1, out.err
        else:
            assert_clean(out, [*env, *named_flags(argv, "run")], argv)
        outcomes[out.code] += 1

    case()
    assert_counted(outcomes, CASES["otel"])


def test_otel_temporality_error_names_its_variable():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    env["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"] = "sometimes"
    out = run_main(["run"], env, export_dry_run)
    assert out.err.startswith(f"{ERROR_PREFIX}OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: "), out.err


def test_otel_timeout_error_names_its_variable():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}
    out = run_main(["run"], env, export_dry_run)
    assert out.code == 2 and "OTEL_EXPORTER_OTLP_TIMEOUT" in out.err, out.err


def test_otel_export_interval_fits_a_thread_wait():
    """1e300 ms kills the SDK's export thread (OverflowError in Event.wait): refuse or bound it."""
    settings_ = ExportSettings(otlp_endpoint="http://127.0.0.1:4317")
    try:
        otlp = resolve_otlp(settings_, {"OTEL_METRIC_EXPORT_INTERVAL": "1e300"})
    except TelemetryError:
        return
    assert otlp is not None and otlp.interval_ms / 1000 <= threading.TIMEOUT_MAX


# --------------------------------------------------------------------------- what fuzzing found

#: YAML aliases nest nine lists of ten in one value: 10^9 leaves, in a file of 500 bytes.
BOMB = "[" + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 10)}]" for i in range(9)) + "]"
#: One case per crash or wrong answer the fuzzing found, fixed since: argv, env, file text,
#: and the exit status and start of stderr expected ("FILE" stands for the file's path).
FOUND = {
    "url-unclosed-ipv6": (["run", "--otlp-endpoint", "http://[::1"], {}, None, 2, "--otlp-endpoint: "),
    "url-invalid-ipv6": (["run", "--otlp-endpoint", "http://[zz]:80"], {}, None, 2, "--otlp-endpoint: "),
    "int-over-4300-digits": (["run", "--max-series", "1" * 5000], {}, None, 2, "--max-series: "),
    "yaml-hex-int": (["run"], {}, "max_series: 0x" + "f" * 5000, 2, "FILE: max_series: "),
    "yaml-decimal-int": (["run"], {}, "max_series: " + "1" * 5000, 2, "FILE: line 1, column 13: "),
    "yaml-tag-int": (["run"], {}, "interval: !!int abc", 2, "FILE: line 1, column 11: "),
    "yaml-tag-bool": (["run"], {}, "addresses: {enabled: !!bool x}", 2, "FILE: line 1, column 22: "),
    "yaml-tag-timestamp": (["run"], {}, "interval: !!timestamp x", 2, "FILE: line 1, column 11: "),
    "yaml-tag-float": (["run"], {}, "buckets: [!!float x]", 2, "FILE: line 1, column 11: "),
    "yaml-deep-flow": (
        ["run"],
        {},
        "interval: " + "[" * 3000,
        2,
        "FILE: line 1, column 75: invalid YAML: '['",
    ),
    "yaml-deep-block": (["run"], {}, "interval:\n" + "- " * 3000, 2, "FILE: invalid YAML: nested too deeply"),
    "yaml-tagged-key": (
        ["run"],
        {},
        "!!set stages: null",
        2,
        "FILE: line 1, column 1: invalid YAML: found unhashable",
    ),
    "yaml-tagged-file": (
        ["run"],
        {},
        "!!set null",
        2,
        "FILE: line 1, column 1: invalid YAML: expected a mapping",
    ),
    "yaml-lone-surrogate": (["run"], {}, 'filter: {netns: ["\\ud800"]}', 2, "FILE: filter.netns[0]: "),
    "bucket-below-1ns": (["run", "--buckets", "1e-999999999999999999"], {}, None, 2, "--buckets: "),
    "interface-raw-byte": (["run", "--interface", "\udcff"], {}, None, 0, ""),
    "config-nul": (["run", "--config", "a\0b"], {}, None, 2, "--config: "),
    "empty-argument": (
        ["run", "", "\n"],
        {},
        None,
        2,
        "unrecognized arguments: '' '\\n' (see otel-netlat --help)",
    ),
}


@pytest.mark.parametrize(("argv", "env", "text", "code", "start"), list(FOUND.values()), ids=list(FOUND))
def test_found_by_fuzzing(argv, env, text, code, start, tmp_path: Path):
    if text is not None:
        argv = [*argv, "--config", write(tmp_path / "f.yaml", text)]
    out = run_main(argv, env)
    assert out.code == code, out
    start = start.replace("FILE", str(tmp_path / "f.yaml"))
    assert out.err == "" if code == 0 else out.err.removeprefix(ERROR_PREFIX).startswith(start), out.err
    assert len(out.err.splitlines()) == code // 2, out.err


# --------------------------------------------------------------------------- real processes


def cap_memory() -> None:
    """In the child: 512 MiB of address space (the CLI needs 30), so that a regression in the
    cases below (an alias bomb, /dev/zero) fails the test instead of exhausting the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))


#: Real runs; the alias bomb and /dev/zero only here, where a regression is contained.
SUBPROCESS = {
    "flag": (["run", "--interval", "x"], {}, None, "otel-netlat: error: --interval: "),
    "variable": (["check"], {"NETLAT_LISTEN": "abc"}, None, "otel-netlat: error: NETLAT_LISTEN: "),
    "file-key": (["watch"], {}, "max_series: 0x" + "f" * 5000, "otel-netlat: error: FILE: max_series: "),
    "alias-bomb": (["run"], {}, f"interval: {BOMB}", "otel-netlat: error: FILE: interval: "),
    "raw-byte": ([b"run", b"--listen", b"\xff:80"], {}, None, "otel-netlat: error: --listen: "),
    "usage": (
        ["run", "--intervall", "5"],
        {},
        None,
        "otel-netlat: error: unrecognized arguments: --intervall 5",
    ),
    "dev-zero": (["run", "--config", "/dev/zero"], {}, None, "otel-netlat: error: /dev/zero: not a config"),
}


@pytest.mark.parametrize(("argv", "env", "text", "start"), list(SUBPROCESS.values()), ids=list(SUBPROCESS))
def test_process_exits_2_with_one_line(argv, env, text, start, tmp_path: Path):
    if text is not None:
        argv = [*argv, "--config", write(tmp_path / "f.yaml", text)]
    proc = subprocess.run(
        [sys.executable, "-m", "otel_netlat.commands.cli", *argv],
        capture_output=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **env},
        preexec_fn=cap_memory,
    )
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert (proc.returncode, proc.stdout) == (2, b""), err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith(start.replace("FILE", str(tmp_path / "f.yaml"))), err
