"""Function hooks: which backend attaches them here (fentry or kprobe), and to which symbol.

The stage table names kernel functions (kind ``function``). What can attach them depends on
the running kernel, probed once into ``KernelFeatures`` (fentry by loading a probe program,
kprobes by the kernel's kprobe PMU, symbols from kallsyms and BTF); this module only reads
that value.

Functions the compiler renamed (``ip_rcv_finish.isra.0``) are attached by kprobe under
their exact symbol; fentry needs the function in BTF under its own name. A function that
is in neither (inlined, not built) makes its stage unavailable with a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from otel_netlat.kernel.features import KernelFeatures
from otel_netlat.kernel.tracepoints import prototype_problem
from otel_netlat.stages.table import FENTRY, FUNCTION, KPROBE, RETURN_ARGS, TRACEPOINT, Hook, Stage


@dataclass(frozen=True)
class Backends:
    """The function-hook backends ``--hooks MODE`` allows, judged on one ``KernelFeatures``."""

    mode: str
    features: KernelFeatures

    @property
    def kprobe(self) -> str | None:
        """Problem with kprobes, or None."""
        return self.features.kprobe_error

    @property
    def fentry(self) -> str | None:
        """Problem with fentry, or None."""
        return self.features.fentry_error

    def problem(self, backend: str) -> str | None:
        return self.fentry if backend == FENTRY else self.kprobe

    def candidates(self) -> tuple[str, ...]:
        """Backends to try for a function stage, best first."""
        return {"auto": (FENTRY, KPROBE), FENTRY: (FENTRY,), KPROBE: (KPROBE,)}.get(self.mode, ())

    def forced_problem(self) -> str | None:
        """For ``--hooks fentry|kprobe``: why that backend cannot work here, or None."""
        return self.problem(self.mode) if self.mode in (FENTRY, KPROBE) else None

    def summary(self) -> str:
        """One line for ``check`` and the log: each backend's verdict and the chosen one."""
        fentry = self.fentry or "fentry: available (probe program loaded and attached)"
        kprobe = self.kprobe or "kprobes: available"
        chosen = self.default_backend()
        return f"--hooks {self.mode}: function hooks use {chosen or 'none'}; {fentry}; {kprobe}"

    def default_backend(self) -> str | None:
        """The backend function hooks get when nothing about a function forbids it."""
        return next((b for b in self.candidates() if self.problem(b) is None), None)

    def resolve_hook(self, hook: Hook, backend: str) -> tuple[Hook | None, str | None]:
        """``hook`` resolved for ``backend`` (kind and exact symbol), or a reason it cannot be."""
        name = hook.target
        variants = list(self.features.symbols.get(name, ()))
        if hook.at_return and backend != FENTRY:
            return None, (
                f"kprobe: the return of {name} needs fexit (a kretprobe holds one of its few "
                "instances for every reader blocked there, and misses reads)"
            )
        if backend == FENTRY:
            if name not in variants:
                renamed = f" (only {', '.join(variants)}: renamed by the compiler)" if variants else ""
                return None, f"fentry: function {name} is not in /proc/kallsyms{renamed}"
            if name not in self.features.btf_functions:
                return None, f"fentry: function {name} is not in this kernel's BTF (inlined or renamed)"
            if hook.at_return:
                args = self.features.function_args.get(name, ())
                problem = prototype_problem(f"fexit: {name}", args, RETURN_ARGS.get(name, ()))
                if problem:
                    return None, problem
            return replace(hook, kind=FENTRY, symbol=name), None
        if name in variants:
            return replace(hook, kind=KPROBE, symbol=name), None
        if len(variants) == 1:
            problem = self.renamed_problem(hook, variants[0])
            if problem:
                return None, problem
            return replace(hook, kind=KPROBE, symbol=variants[0]), None
        if variants:
            copies = ", ".join(variants)
            return None, f"kprobe: function {name} exists only as several compiler copies ({copies})"
        return None, f"function {name} is not in /proc/kallsyms (inlined or not built into this kernel)"

    def renamed_problem(self, hook: Hook, symbol: str) -> str | None:
        """Why a kprobe may not read ``hook``'s argument in a compiler copy (``.isra.0``,
        ``.constprop.0``) of its function, or None.

        Such a copy may have dropped or moved arguments, so its registers are not the
        declared ones. BTF proves the prototype: pahole leaves out functions whose copies
        disagree with the declaration, so a function in BTF whose argument ``hook.arg`` has
        the type the C reads is safe to probe by register.
        """
        want = "struct sk_buff *" if hook.obj in ("skb", "skb_nh") else "struct sock *"
        args = self.features.function_args.get(hook.target)
        if hook.target not in self.features.btf_functions or args is None:
            return (
                f"kprobe: {hook.target} exists only as the compiler copy {symbol}, whose arguments "
                "BTF does not describe (they may have moved)"
            )
        got = args[hook.arg] if hook.arg is not None and hook.arg < len(args) else None
        if got != want:
            return f"kprobe: {symbol}: argument {hook.arg} is {got or 'absent'} in BTF, not {want}"
        return None

    def resolve_stage(self, stage: Stage) -> tuple[Stage | None, str | None]:
        """A function stage with both hooks resolved to one backend, or the reason why not."""
        if self.mode == TRACEPOINT:
            return None, "--hooks tracepoint: this stage needs function hooks (fentry or kprobe)"
        reasons: list[str] = []
        for backend in self.candidates():
            problem = self.problem(backend)
            if problem:
                reasons.append(problem)
                continue
            hooks: list[Hook] = []
            for hook in stage.hooks:
                if hook.kind != FUNCTION:
                    hooks.append(hook)
                    continue
                resolved, why = self.resolve_hook(hook, backend)
                if resolved is None:
                    reasons.append(why or "")
                    break
                hooks.append(resolved)
            else:
                n = 2 + len(stage.extra_ends)  # hooks: start, end, extra ends, extra starts
                ends, starts = tuple(hooks[2:n]), tuple(hooks[n:])
                resolved = replace(stage, start=hooks[0], end=hooks[1], extra_ends=ends, extra_starts=starts)
                return resolved, None
        return None, "; ".join(reasons) or "no function-hook backend selected"


def needs_functions(stage: Stage) -> bool:
    return any(h.kind == FUNCTION for h in stage.hooks)


__all__ = ["Backends", "needs_functions"]
