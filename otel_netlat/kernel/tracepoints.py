"""Whether a stage's tracepoints exist here with the arguments the C reads.

Built-in hooks attach as raw tracepoints and are judged by their BTF prototype
(``btf_trace_<event>``); user-defined tracepoint hooks read a field of the classic record
and are judged by its tracefs format file. What the kernel has is probed once
(``otel_netlat.kernel.features``); the judgements here only read that value.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from otel_netlat.stages.table import RAW_ARGS, RAW_TRACEPOINT, Hook, Stage

if TYPE_CHECKING:
    from otel_netlat.kernel.features import KernelFeatures

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
#: What a user-defined hook's skb field must be: a pointer.
POINTER_SIZE = 8


def prototype_problem(subject: str, args: tuple[str, ...] | list[str], want: tuple[str, ...]) -> str | None:
    """Why a hook whose C reads ``want`` cannot use a kernel prototype ``args``, or None."""
    if tuple(args[: len(want)]) == want:
        return None
    return f"{subject} takes ({', '.join(args)}) on this kernel; otel-netlat reads ({', '.join(want)})"


def tracefs_root() -> Path | None:
    """The mounted tracefs, if any."""
    for root in TRACEFS_ROOTS:
        if (root / "events").is_dir():
            return root
    return None


def read_format(target: str, root: Path) -> dict[str, tuple[int, int]]:
    """A classic tracepoint's record: field name → (offset, size), from its tracefs format file.

    OSError (FileNotFoundError when the kernel has no such tracepoint) if it cannot be read.
    """
    group, event = target.split(":", 1)
    fields: dict[str, tuple[int, int]] = {}
    for line in (root / "events" / group / event / "format").read_text().splitlines():
        parts = [x.strip() for x in line.strip().split(";")]
        if not parts[0].startswith("field:"):
            continue
        values = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
        name = parts[0].split()[-1].split("[")[0]
        fields[name] = (int(values.get("offset", -1)), int(values.get("size", 0)))
    return fields


def tracepoint_field_offset(target: str, field: str, root: Path | None = None) -> int:
    """Byte offset of ``field`` in a tracepoint's record, from its format file (KeyError if absent)."""
    root = root or tracefs_root()
    if root is None:
        raise KeyError(f"{target}: tracefs is not mounted")
    try:
        return read_format(target, root)[field][0]
    except KeyError:
        raise KeyError(f"tracepoint {target} has no field {field}") from None


def hook_problem(hook: Hook, features: KernelFeatures) -> str | None:
    """Why a tracepoint hook cannot attach on this kernel, or None (function hooks: None).

    A raw tracepoint needs its BTF prototype to start with what the C reads (RAW_ARGS); a
    user-defined one needs its skb field in the record, 8 bytes wide.
    """
    if hook.is_function:
        return None
    target = hook.target
    if hook.attach_type == RAW_TRACEPOINT:
        if target not in features.raw_tracepoints:
            return features.btf_error or f"tracepoint {target} was not probed"
        args = features.raw_tracepoints[target]
        if args is None:
            return f"tracepoint {target} does not exist on this kernel"
        return prototype_problem(f"tracepoint {target}", args, RAW_ARGS.get(target, ()))
    fields = features.tracepoint_fields.get(target, f"tracepoint {target} was not probed")
    if isinstance(fields, str):
        return fields
    if hook.field not in fields:
        return f"tracepoint {target} lacks field(s) {hook.field} on this kernel"
    if fields[hook.field] != POINTER_SIZE:
        return f"tracepoint {target}: field {hook.field} is not a pointer (not 8 bytes)"
    return None


def stage_problem(stage: Stage, features: KernelFeatures) -> str | None:
    """Why a stage's tracepoints cannot attach on this kernel (first missing hook), or None.

    Function hooks are judged by ``otel_netlat.kernel.backends`` (they depend on the backend).
    """
    for hook in stage.hooks:
        problem = hook_problem(hook, features)
        if problem:
            return problem
    return None
