"""How a bad setting is reported: one line naming where the value came from, and the value.

Every other module of the package raises through these helpers, so all messages share
one form: ``"<where>: <problem>, got <value>[; <hint>]"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

__all__ = ["ConfigError", "Src", "fail", "show", "suggest", "unknown"]


class ConfigError(Exception):
    """A bad setting. ``str()`` is one line, ``"<where>: <problem>"``, fit to print before exiting."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        # A path or value with a newline in it must not break the one-line promise.
        super().__init__(" ".join(f"{where}: {problem}".splitlines()))


@dataclass(frozen=True)
class Src:
    """Where a raw value came from. ``text``: a flag or variable, so strings are parsed."""

    where: str
    text: bool

    def at(self, index: int) -> Src:
        """The source of a list item: YAML items get an index, text items show themselves."""
        return self if self.text else Src(f"{self.where}[{index}]", False)


#: Longest value shown in a message; longer ones end in "...".
SHOW_MAX = 80


def show(value: object) -> str:
    """A value as the user wrote it, short and on one line (``repr`` escapes newlines)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = _bounded_repr(value, SHOW_MAX + 1)
    return text if len(text) <= SHOW_MAX else text[: SHOW_MAX - 3] + "..."


def _bounded_repr(value: object, limit: int) -> str:
    """``repr(value)``, or a prefix of it of at least ``limit`` characters when it is longer.

    YAML aliases make a small file a huge nested value (``[*a, *a]`` ten levels deep has
    2^10 leaves) or one that contains itself; a full ``repr`` of that would never finish.
    """
    writer = _ReprWriter(limit)
    writer.value(value, frozenset())
    return "".join(writer.parts)


class _ReprWriter:
    """Writes ``repr`` of lists, tuples and dicts piece by piece, stopping at ``limit`` characters."""

    BRACKETS = {list: ("[", "]"), tuple: ("(", ")"), dict: ("{", "}")}

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit

    def emit(self, text: str) -> bool:
        """Append ``text``; False once the limit is reached (the caller stops writing)."""
        self.parts.append(text)
        self.size += len(text)
        return self.size < self.limit

    def value(self, item: object, open_ids: frozenset[int]) -> bool:
        """Write ``item``; ``open_ids``: the containers being written around it. False: stop."""
        brackets = self.BRACKETS.get(type(item))
        if brackets is None:
            return self.emit(_scalar_repr(item))
        opening, closing = brackets
        if id(item) in open_ids:  # it contains itself: shown as repr does
            return self.emit(f"{opening}...{closing}")
        open_ids |= {id(item)}
        if not self.emit(opening):
            return False
        pairs = item.items() if isinstance(item, dict) else ((None, e) for e in item)  # type: ignore[attr-defined]
        for i, (key, element) in enumerate(pairs):
            if i and not self.emit(", "):
                return False
            if isinstance(item, dict) and not (self.value(key, open_ids) and self.emit(": ")):
                return False
            if not self.value(element, open_ids):
                return False
        if isinstance(item, tuple) and len(item) == 1 and not self.emit(","):
            return False
        return self.emit(closing)


def _scalar_repr(value: object) -> str:
    """``repr``, except for integers too long for decimal text (YAML hex can make those)."""
    try:
        return repr(value)
    except ValueError:  # int -> str refuses more than sys.get_int_max_str_digits() digits
        return hex(value) if isinstance(value, int) else f"<{type(value).__name__}>"


def fail(src: Src, problem: str, value: object, hint: str = "") -> NoReturn:
    """Raise the error for ``value`` from ``src``."""
    raise ConfigError(src.where, f"{problem}, got {show(value)}" + (f"; {hint}" if hint else ""))


def suggest(word: object, choices: Sequence[str], prefix: str = "") -> str:
    """``"did you mean 'x'?"`` for the closest choice (with ``prefix``), or ``""``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6) if isinstance(word, str) else []
    return f"did you mean '{prefix}{close[0]}'?" if close else ""


def unknown(where: str, what: str, word: object, known: Sequence[str], prefix: str = "") -> NoReturn:
    """An unknown name: the closest known one first, then the full list."""
    hint = suggest(word, known, prefix)
    shown = f"'{prefix}{word}'" if isinstance(word, str) else show(word)
    hint = f"; {hint}" if hint else ""
    raise ConfigError(where, f"unknown {what} {shown}{hint} (known: {', '.join(known)})")
