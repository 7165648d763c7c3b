"""The strict reading of the YAML config file: no duplicate keys, no unknown keys, no guessing.

PyYAML alone lets a duplicate key silently win and ignores nothing; here both are errors
that name the key path (``otlp.protocl``) and the closest known key, because a typo in a
config file must not quietly leave a setting at its default.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import yaml

from otel_netlat.config.errors import ConfigError, Src, fail, show, unknown

__all__ = ["MAX_CONFIG_BYTES", "FileValues", "expect_mapping", "file_values", "read_yaml"]

#: A config file is a few hundred bytes; this bounds what a wrong path (/dev/zero) can cost.
MAX_CONFIG_BYTES = 1 << 20
#: Deeper ``[``/``{`` nesting is refused as it is scanned: PyYAML's scanner takes time
#: quadratic in it (seconds at a thousand levels).
MAX_FLOW_NESTING = 64
#: What PyYAML's scalar constructors raise on a value their tag cannot hold
#: (``!!int abc``, ``!!bool x``, ``!!timestamp x``, a decimal int of over 4300 digits).
_CONSTRUCTOR_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)

#: The file's settings by dotted key (``otlp.protocol``), each with its source.
FileValues = dict[str, tuple[object, Src]]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would otherwise let the last win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # ``!!set x``: PyYAML says what is wrong
            return super().construct_mapping(node, deep=deep)
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # merge keys may override; non-scalar keys are refused by the caller
            key = self.construct_object(key_node)
            if not isinstance(key, Hashable):
                continue  # a tagged scalar (``!!omap k: v``): refused by the caller
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {show(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 - PyYAML's name
        """A ``[`` or ``{``: refused past MAX_FLOW_NESTING levels, before the scan slows down."""
        if self.flow_level >= MAX_FLOW_NESTING:
            raise yaml.scanner.ScannerError(
                None, None, f"'[' and '{{' nested more than {MAX_FLOW_NESTING} deep", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value its tag cannot hold is a YAML error at its line, not a Python exception."""
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTOR_ERRORS:
            value = node.value if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"not a valid {tag} value: {show(value)}", node.start_mark
            ) from None


def read_yaml(path: str, origin: str) -> object:
    """The parsed file; ``origin`` (``--config`` or ``NETLAT_CONFIG``) names who asked for it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(origin, f"cannot read config file {path!r}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL in the path (only possible in-process; argv cannot hold one)
        raise ConfigError(origin, f"cannot read config file {path!r}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not UTF-8 text (byte {e.start})") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(path, f"not a config file: longer than {MAX_CONFIG_BYTES} characters")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except RecursionError:
        raise ConfigError(path, "invalid YAML: nested too deeply") from None
    except _CONSTRUCTOR_ERRORS as e:  # from a collection PyYAML fills after making it
        raise ConfigError(path, f"invalid YAML: {type(e).__name__}: {e}") from None
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
