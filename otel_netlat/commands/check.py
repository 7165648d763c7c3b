"""``otel-netlat check``: every finding of the plan ``run`` would make here, one line each.

The findings are the ones ``run`` acts on (``otel_netlat.program.plan``): check only prints
them, and says whether ``run`` would start and, if not, the line it would stop with.
"""

from __future__ import annotations

from otel_netlat.config import Config
from otel_netlat.program.plan import Finding, make_plan, probe_for


def report(findings: tuple[Finding, ...] | list[Finding]) -> list[str]:
    """``ok``/``NO``, the finding's name, its detail; then whether ``run`` would start."""
    width = max(len(f.name) for f in findings)
    lines = [f"{'ok ' if f.ok else 'NO '} {f.name:<{width}}  {f.detail}" for f in findings]
    fatal = next((f for f in findings if f.fatal), None)
    lines.append("run would start" if fatal is None else f"run would NOT start: {fatal.error}")
    return lines


def run_check(config: Config) -> int:
    """Print the report; exit status 0 when ``run`` with this configuration would start, else 1."""
    plan = make_plan(config, probe_for(config))
    print("\n".join(report(plan.findings)))
    return 0 if plan.fatal is None else 1
