"""Which tracepoints this kernel has, and whether their arguments are what the C reads.

Built-in hooks attach as raw tracepoints and are judged by their BTF prototype
(``btf_trace_<event>``); user-defined tracepoint hooks read a field of the classic record
and are judged by its tracefs format file.
"""

from __future__ import annotations

from pathlib import Path

from otel_netlat.kernel.btf import BtfError, kernel_btf
from otel_netlat.stages.table import RAW_ARGS, Stage

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def prototype_problem(subject: str, args: list[str], want: tuple[str, ...]) -> str | None:
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


def raw_tracepoint_problem(target: str) -> str | None:
    """Why a built-in hook cannot attach here as a raw tracepoint (judged from BTF), or None."""
    try:
        args = kernel_btf().tracepoint_args(target.split(":", 1)[1])
    except BtfError as e:
        return str(e)
    if args is None:
        return f"tracepoint {target} does not exist on this kernel"
    return prototype_problem(f"tracepoint {target}", args, RAW_ARGS[target])


def tracepoint_problem(
    target: str, root: Path | None = None, pointer_fields: tuple[str, ...] = ()
) -> str | None:
    """Why a tracepoint cannot be used here, or None when it can.

    Built-in hooks are raw tracepoints, judged by their BTF prototype. A user-defined hook
    reads a field of the classic record: its format must have ``pointer_fields`` as 8-byte
    fields.
    """
    if target in RAW_ARGS and not pointer_fields:
        return raw_tracepoint_problem(target)
    root = root or tracefs_root()
    if root is None:
        return "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
    group, event = target.split(":", 1)
    fmt = root / "events" / group / event / "format"
    try:
        text = fmt.read_text()
    except FileNotFoundError:
        return f"tracepoint {target} does not exist on this kernel"
    except OSError as e:
        return f"cannot read {fmt}: {e.strerror}"
    fields = {
        line.split(";")[0].split()[-1].split("[")[0]
        for line in text.splitlines()
        if line.strip().startswith("field:")
    }
    missing = [f for f in pointer_fields if f not in fields]
    if missing:
        return f"tracepoint {target} lacks field(s) {', '.join(missing)} on this kernel"
    for line in text.splitlines():
        decl, _, rest = line.strip().partition(";")
        name = decl.split()[-1].split("[")[0] if decl.startswith("field:") else None
        if name in pointer_fields and "size:8;" not in rest.replace("\t", "").replace(" ", ""):
            return f"tracepoint {target}: field {name} is not a pointer (not 8 bytes)"
    return None


def tracepoint_field_offset(target: str, field: str, root: Path | None = None) -> int:
    """Byte offset of ``field`` in a tracepoint's record, from its format file (KeyError if absent)."""
    root = root or tracefs_root()
    if root is None:
        raise KeyError(f"{target}: tracefs is not mounted")
    group, event = target.split(":", 1)
    for line in (root / "events" / group / event / "format").read_text().splitlines():
        parts = [x.strip() for x in line.strip().split(";")]
        if not parts[0].startswith("field:") or parts[0].split()[-1].split("[")[0] != field:
            continue
        for part in parts[1:]:
            if part.startswith("offset:"):
                return int(part.removeprefix("offset:"))
    raise KeyError(f"tracepoint {target} has no field {field}")


def stage_problem(stage: Stage, root: Path | None = None) -> str | None:
    """Why a tracepoint stage cannot attach on this kernel (first missing hook), or None.

    Function hooks are judged by ``otel_netlat.kernel.backends`` (they depend on the backend).
    """
    for hook in stage.hooks:
        if hook.is_function:
            continue
        problem = tracepoint_problem(hook.target, root, (hook.field,) if hook.field else ())
        if problem:
            return problem
    return None
