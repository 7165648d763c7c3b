"""The package's shape: imports go one way, and what is written by hand matches the code.

A reorganisation leaves stale names behind wherever nothing checks them (a module table
naming files that moved, a test looping over a stage list the table has outgrown); these
tests are that check. None of them needs root or a kernel.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from otel_netlat.stages.table import (
    ALL_STAGES,
    BUILTIN_STAGES,
    DEFAULT_STAGES,
    DIRECT_STAGES,
    DROPS,
    STAGE_NAMES,
)

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "otel_netlat"
README = (REPO / "README.md").read_text()
# A table cell ends at a pipe that is not escaped (`a \| b` stays one cell).
CELL_SPLIT = re.compile(r"(?<!\\)\|")
BACKTICKED = re.compile(r"`([^`]+)`")


def section(markdown: str, title: str) -> str:
    """The text under ``## title`` down to the next ``## `` heading (subsections included)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def tables(text: str) -> list[list[str]]:
    """Each markdown table in ``text`` as its body rows' first cells (header and rule dropped).

    A table is a run of lines starting with ``|``; a blank line ends it, as it does for
    every markdown renderer.
    """
    found: list[list[str]] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            found.append([CELL_SPLIT.split(row)[1].strip() for row in block[2:]])
            block = []
    return found


# ---- imports go one way ---------------------------------------------------------------


def test_lower_layers_never_import_higher_ones():
    """import-linter's layers contract (``[tool.importlinter]`` in pyproject.toml) holds.

    The layers are exhaustive: a new subpackage fails here until it is given its place.
    """
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), f"{lint} missing: install the test extra (pip install -e '.[test]')"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, whatever is installed
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout, proc.stdout


# ---- the README's module table ---------------------------------------------------------


def listed_modules() -> set[str]:
    """Backticked paths in the first column of the tables under ``## Architecture``."""
    cells = [cell for table in tables(section(README, "Architecture")) for cell in table]
    return {path for cell in cells for path in BACKTICKED.findall(cell) if path.endswith(".py")}


def test_readme_lists_every_module():
    """Each module has a row (``| `otel_netlat/collect/reader.py` | its job |``), and no row is stale.

    ``__init__.py`` files may be listed; the other modules must be.
    """
    listed = listed_modules()
    modules = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(m for m in modules - listed if not m.endswith("/__init__.py"))
    assert not missing, f"README.md '## Architecture' has no row for {missing}"
    stale = sorted(listed - modules)
    assert not stale, f"README.md '## Architecture' lists modules that do not exist: {stale}"


# ---- stage names come from the stage table ---------------------------------------------


def test_readme_stage_table_has_one_row_per_stage():
    """The table under ``## Stages``: one row per stage of the table, plus ``drops``."""
    first = tables(section(README, "Stages"))[0]
    names = [m.group(1) for cell in first if (m := re.fullmatch(r"`([^`]+)`", cell))]
    assert len(names) == len(first), f"first cells that are not one backticked name: {first}"
    twice = [n for n, k in Counter(names).items() if k > 1]
    assert not twice, f"stages with more than one row: {twice}"
    assert set(names) == set(STAGE_NAMES), (
        f"missing: {sorted(set(STAGE_NAMES) - set(names))}, unknown: {sorted(set(names) - set(STAGE_NAMES))}"
    )


#: The stage groups a hand-written list may stand for, by the table.
STAGE_GROUPS = {
    frozenset(s.name for s in BUILTIN_STAGES): "the tracepoint stages (BUILTIN_STAGES)",
    frozenset(
        s.name for s in DIRECT_STAGES
    ): "the stages of a packet the host does not forward (DIRECT_STAGES)",
    frozenset((*(s.name for s in BUILTIN_STAGES), DROPS)): "BUILTIN_STAGES and drops",
    frozenset((*(s.name for s in DEFAULT_STAGES), DROPS)): "the default stages and drops (DEFAULT_STAGES)",
    frozenset(s.name for s in ALL_STAGES): "every stage (ALL_STAGES)",
    frozenset(STAGE_NAMES): "every stage and drops (STAGE_NAMES)",
}


def stage_lists(path: Path) -> list[tuple[int, list[str]]]:
    """(line, names) of every literal tuple, list or set of three or more stage names in ``path``.

    An element may also be a tuple whose first item is the name (``("qdisc", "transmit")``).
    Shorter lists are deliberate picks (the stages some traffic reaches), not "all of them".
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Tuple | ast.List | ast.Set) or len(node.elts) < 3:
            continue
        heads = [e.elts[0] if isinstance(e, ast.Tuple) and e.elts else e for e in node.elts]
        names = [h.value for h in heads if isinstance(h, ast.Constant) and isinstance(h.value, str)]
        if len(names) == len(heads) and set(names) <= set(STAGE_NAMES):
            found.append((node.lineno, names))
    return found


def test_hand_written_stage_lists_match_the_table():
    """A list of stage names written out in a test or benchmark is one of the table's groups.

    When the table gains a stage, every such list fails here instead of silently skipping it.
    """
    wrong = []
    for path in sorted([*REPO.joinpath("tests").rglob("*.py"), *REPO.joinpath("bench").rglob("*.py")]):
        for line, names in stage_lists(path):
            if frozenset(names) not in STAGE_GROUPS or len(set(names)) != len(names):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {names}")
    assert not wrong, (
        "stage lists that are none of " + "; ".join(STAGE_GROUPS.values()) + ":\n" + "\n".join(wrong)
    )
