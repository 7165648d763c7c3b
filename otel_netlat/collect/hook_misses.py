"""Hook runs the kernel skipped: the one loss no BPF map can count.

The kernel does not run a tracing program re-entrantly on a CPU: when an interrupt hits a
hook while that program (a raw tracepoint's own program; for classic tracepoints and
kprobes, any tracing program) is already running there, the nested run is skipped and
its packet goes unseen by that hook. The kernel counts each skip per program
(``recursion_misses`` in the program fd's ``fdinfo``) — for fentry/fexit since Linux 5.12,
for raw tracepoints since about 6.2, for kprobes and classic tracepoints only since 6.7;
before that such a series stays 0 although skips are not counted. This module turns the
counts into ``netlat.agent.hook.missed``, one series per hook. Reading costs one small
procfs file per program per interval, whatever the packet rate.
"""

from __future__ import annotations

from pathlib import Path

from otel_netlat.collect.snapshot import CounterPoint, as_attributes
from otel_netlat.stages.table import FENTRY, KPROBE, RAW_ARGS, RAW_TRACEPOINT, TRACEPOINT, Hook

FDINFO = Path("/proc/self/fdinfo")


def recursion_misses(fd: int, fdinfo: Path = FDINFO) -> int | None:
    """The ``recursion_misses`` of the program behind ``fd``; None where the kernel has none."""
    try:
        text = (fdinfo / str(fd)).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "recursion_misses":
            return int(value.strip())
    return None


def function_hooks(hooks: tuple[Hook, ...], kprobe_names: dict[str, str]) -> dict[str, tuple[str, str]]:
    """BCC function name → (``netlat.hook``, ``netlat.hook.type``) for every probe we load.

    BCC names programs by kind: ``raw_tracepoint__<event>``, ``tracepoint__<group>__<event>``
    (user-defined stages), ``kfunc__<function>`` (fentry), ``kretfunc__<function>`` (fexit);
    kprobe probes carry the names the
    loader gave them (``kprobe_names``: symbol → C function name).
    """
    out = {f"raw_tracepoint__{t.split(':', 1)[1]}": (t, RAW_TRACEPOINT) for t in RAW_ARGS}
    for hook in hooks:
        if hook.kind == TRACEPOINT and hook.field is not None:
            out["tracepoint__" + hook.target.replace(":", "__")] = (hook.target, TRACEPOINT)
        elif hook.kind == FENTRY:
            prefix = "kretfunc__" if hook.at_return else "kfunc__"
            out[prefix + hook.attach_name] = (hook.attach_name, hook.attach_type)
        elif hook.kind == KPROBE and hook.attach_name in kprobe_names:
            out[kprobe_names[hook.attach_name]] = (hook.attach_name, KPROBE)
    return out


class MissReader:
    """Reads every loaded program's skip count, labelled by the hook it sits on."""

    def __init__(self, funcs: dict[bytes, object], names: dict[str, tuple[str, str]]) -> None:
        self._programs: list[tuple[int, object]] = []
        for raw_name, fn in funcs.items():
            name = raw_name.decode()
            hook, kind = names.get(name, (None, None))
            if hook is None:
                continue  # not a hook of ours (the self-test probe)
            attrs = as_attributes({"netlat.hook": hook, "netlat.hook.type": kind})
            self._programs.append((fn.fd, attrs))
        self.supported = bool(self._programs) and recursion_misses(self._programs[0][0]) is not None

    def read(self) -> tuple[CounterPoint, ...]:
        """One point per hook; empty on kernels whose fdinfo has no ``recursion_misses``."""
        if not self.supported:
            return ()
        points = []
        for fd, attrs in self._programs:
            value = recursion_misses(fd)
            if value is not None:
                points.append(CounterPoint(attrs, value))
        return tuple(points)
