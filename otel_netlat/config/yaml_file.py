"""The strict reading of the YAML config file: no duplicate keys, no unknown keys, no guessing.

PyYAML alone lets a duplicate key silently win and ignores nothing; here both are errors
that name the key path (``otlp.protocl``) and the closest known key, because a typo in a
config file must not quietly leave a setting at its default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from otel_netlat.config.errors import ConfigError, Src, fail, show, unknown

__all__ = ["FileValues", "expect_mapping", "file_values", "read_yaml"]

#: The file's settings by dotted key (``otlp.protocol``), each with its source.
FileValues = dict[str, tuple[object, Src]]


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
                    None, None, f"duplicate key {show(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str, origin: str) -> object:
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
            unknown(file, "key", key, known, prefix)


def expect_mapping(
    value: object, file: str, path: str, known: Sequence[str], required: Sequence[str] = ()
) -> dict[str, Any]:
    """A YAML section or list entry: a mapping with only ``known`` keys and every ``required`` one."""
    if not isinstance(value, dict):
        fail(Src(f"{file}: {path}", False), f"expected a mapping with keys {', '.join(known)}", value)
    _check_keys(value, known, file, f"{path}.")
    for key in required:
        if key not in value:
            raise ConfigError(f"{file}: {path}", f"missing key '{key}'")
    return value


def file_values(data: object, file: str, keys: Sequence[str]) -> FileValues:
    """The settings in the file by dotted key, each with its source; sections flattened.

    ``keys`` are every key the file may hold, dotted for a setting inside a section
    (``otlp.protocol``); their order is the order of the "known" lists in messages.
    """
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        fail(Src(file, False), "expected a mapping of settings at the top level (e.g. 'interval: 5')", data)
    sections: dict[str, list[str]] = {}
    for key in keys:
        if "." in key:
            section, _, sub = key.partition(".")
            sections.setdefault(section, []).append(sub)
    _check_keys(data, list(dict.fromkeys(key.partition(".")[0] for key in keys)), file, "")
    values: FileValues = {}
    for key, value in data.items():
        if key not in sections:
            values[key] = (value, Src(f"{file}: {key}", False))
        elif value is not None:  # a section with every setting commented out is empty, not an error
            for sub, item in expect_mapping(value, file, key, sections[key]).items():
                values[f"{key}.{sub}"] = (item, Src(f"{file}: {key}.{sub}", False))
    return values
