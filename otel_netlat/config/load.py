"""Flags, ``NETLAT_*`` variables and the config file merged into one :class:`Config`.

For each setting the highest source that gives it wins whole (flag, then variable, then
file, then the default); its parser runs on that one raw value only, so a bad value in a
lower source that is overridden is never an error.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from functools import partial
from typing import Any

from otel_netlat.config.custom_stages import CUSTOM_STAGES_KEY, CustomStage, parse_custom_stages
from otel_netlat.config.errors import ConfigError, Src, suggest
from otel_netlat.config.parsers import parse_stages
from otel_netlat.config.settings import (
    COMMANDS,
    CONFIG_ENV,
    ENV_NAMES,
    ENV_PREFIX,
    SETTINGS,
    TOOLING_ENV,
    YAML_KEYS,
    Config,
    Setting,
)
from otel_netlat.config.yaml_file import FileValues, file_values, read_yaml
from otel_netlat.stages.table import STAGE_NAMES

__all__ = ["add_arguments", "load_config"]


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
    for s in SETTINGS:
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
    config_file, from_file, custom = _read_config_file(getattr(args, "config", None), environ)
    known_stages = (*STAGE_NAMES, *(c.name for c in custom))
    values: dict[str, Any] = {}
    sources: list[tuple[str, str]] = []
    for s in SETTINGS:
        raw, src = _pick(s, command, args, environ, from_file)
        if src is None:
            continue  # the Config default applies
        parse = partial(parse_stages, known=known_stages) if s.field == "stages" else s.parse
        values[s.field] = parse(raw, src)
        sources.append((s.field, src.where))
    return Config(
        command=command,
        config_file=config_file,
        custom_stages=custom,
        sources=tuple(sources),
        warnings=_env_warnings(environ),
        **values,
    )


def _read_config_file(
    flag_file: str | None, environ: Mapping[str, str]
) -> tuple[str | None, FileValues, tuple[CustomStage, ...]]:
    """The file named by ``--config`` or else ``NETLAT_CONFIG``: its name, settings and custom stages."""
    if flag_file is None and not environ.get(CONFIG_ENV):
        return None, {}, ()
    origin = "--config" if flag_file is not None else CONFIG_ENV
    config_file = flag_file if flag_file is not None else environ[CONFIG_ENV]
    if not config_file:
        raise ConfigError(origin, "expected a file name, got ''")
    values = file_values(read_yaml(config_file, origin), config_file, YAML_KEYS)
    raw_custom = values.pop(CUSTOM_STAGES_KEY, (None, None))[0]
    return config_file, values, parse_custom_stages(raw_custom, config_file, STAGE_NAMES)


def _pick(
    s: Setting,
    command: str,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    from_file: FileValues,
) -> tuple[object, Src | None]:
    """The highest-precedence raw value of a setting and its source (``None``: default)."""
    if s.flag and command in s.commands and (raw := getattr(args, s.field, None)) is not None:
        return raw, Src(s.flag, True)
    if s.env and (raw := environ.get(s.env)):
        return raw, Src(s.env, True)
    if s.key and s.key in from_file and from_file[s.key][0] is not None:
        return from_file[s.key]
    return None, None


def _env_warnings(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Unknown ``NETLAT_*`` variables: only warnings, as the environment is shared with other tools."""
    warnings = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in ENV_NAMES and not name.startswith(TOOLING_ENV):
            hint = suggest(name, ENV_NAMES)
            warnings.append(f"{name}: unknown environment variable, ignored" + (f"; {hint}" if hint else ""))
    return tuple(warnings)
