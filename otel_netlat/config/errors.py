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


def show(value: object) -> str:
    """A value as the user wrote it, short and on one line (``repr`` escapes newlines)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
