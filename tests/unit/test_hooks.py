"""Function-hook resolution and code generation, without loading anything.

The kernel-level proof (kprobe and fentry really attaching and counting) is in
tests/kernel/test_backends_kernel.py, run inside the Debian test kernels by ``make test-kernels``.
"""

from __future__ import annotations

from pathlib import Path

from otel_netlat.config import Config
from otel_netlat.kernel.backends import Backends
from otel_netlat.kernel.btf import Btf
from otel_netlat.kernel.features import KernelFeatures, kallsyms_variants, parse_kallsyms
from otel_netlat.program.build import ProgramSpec, function_hooks_header
from otel_netlat.program.plan import make_plan
from otel_netlat.stages.table import IP_RCV, IPV6_RCV, SOCKET_FALLBACK, fn

KALLSYMS = """\
ffffffff81000000 T ip_rcv
ffffffff81000100 t ip_rcv_finish.isra.0
ffffffff81000200 t ip_rcv_finish_core.constprop.0
ffffffff81000300 t ip_rcv_finish_core.constprop.0.cold
ffffffff81000400 T tcp_v4_early_demux
ffffffff81000500 T udp_v4_early_demux
ffffffff81000600 T ip_route_input_noref
ffffffff81000700 T ip_local_deliver
ffffffff81000800 t two.part.0
ffffffff81000900 t two.isra.0
ffffffff81000a00 D some_data
ffffffff81000b00 T sock_def_readable
ffffffff81000c00 T inet_recvmsg
ffffffff81000d00 T inet6_recvmsg
"""


def features(
    kprobe: str | None = None,
    fentry: str | None = None,
    btf_functions: set[str] | None = None,
    protos: dict[str, list[str]] | None = None,
    symbols: dict[str, list[str]] | None = None,
) -> KernelFeatures:
    """A kernel whose kallsyms is KALLSYMS (plus ``symbols``), with both backends unless told."""
    syms = {**parse_kallsyms(KALLSYMS), **(symbols or {})}
    return KernelFeatures(
        kprobe_error=kprobe,
        fentry_error=fentry,
        symbols={name: tuple(variants) for name, variants in syms.items()},
        btf_functions=frozenset(btf_functions or ()),
        function_args={name: tuple(args) for name, args in (protos or {}).items()},
    )


def backends(mode: str, **kernel) -> Backends:
    return Backends(mode, features(**kernel))


def test_kallsyms_groups_renamed_text_symbols(tmp_path: Path):
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS)
    syms = kallsyms_variants(path)
    assert syms["ip_rcv_finish"] == ["ip_rcv_finish.isra.0"]
    assert "some_data" not in syms  # data symbols are not hook targets


#: ip_rcv_finish(net, sk, skb) as BTF declares it: the proof a kprobe on a compiler copy needs.
FINISH_PROTO = {"ip_rcv_finish": ["struct net *", "struct sock *", "struct sk_buff *"]}


def test_kprobe_attaches_the_renamed_symbol_when_btf_proves_it():
    b = backends("kprobe", btf_functions={"ip_rcv_finish"}, protos=FINISH_PROTO)
    hook, why = b.resolve_hook(fn("ip_rcv_finish", 2), "kprobe")
    assert why is None and hook is not None
    assert (hook.kind, hook.target, hook.attach_name) == ("kprobe", "ip_rcv_finish", "ip_rcv_finish.isra.0")


def test_kprobe_refuses_a_renamed_copy_btf_does_not_describe():
    """An .isra copy may have moved its arguments: without BTF's word, no kprobe reads them."""
    hook, why = backends("kprobe").resolve_hook(fn("ip_rcv_finish", 2), "kprobe")
    assert hook is None and "ip_rcv_finish.isra.0" in why and "BTF does not describe" in why
    moved = {"ip_rcv_finish": ["struct net *", "struct sk_buff *"]}
    b = backends("kprobe", btf_functions={"ip_rcv_finish"}, protos=moved)
    hook, why = b.resolve_hook(fn("ip_rcv_finish", 2), "kprobe")
    assert hook is None and "argument 2 is absent in BTF" in why


def test_fentry_reports_a_renamed_function():
    b = backends("fentry", btf_functions={"ip_rcv", "ip_rcv_finish"})
    hook, why = b.resolve_hook(fn("ip_rcv_finish", 2), "fentry")
    assert hook is None
    assert "ip_rcv_finish.isra.0" in why and "renamed by the compiler" in why


def test_ambiguous_and_missing_functions_are_reasons():
    b = backends("kprobe")
    assert "several compiler copies" in b.resolve_hook(fn("two", 0), "kprobe")[1]
    assert "inlined or not built" in b.resolve_hook(fn("nowhere", 0), "kprobe")[1]


def test_auto_falls_back_to_kprobe_per_stage():
    # fentry works, but ip_rcv_finish is renamed (not attachable by fentry): kprobe for the stage.
    b = backends("auto", btf_functions={"ip_rcv", "ip_rcv_finish"}, protos=FINISH_PROTO)
    stage, why = b.resolve_stage(IP_RCV)
    assert why is None and stage is not None
    assert {h.kind for h in stage.hooks} == {"kprobe"}


def test_nothing_available_gives_both_reasons():
    b = backends(
        "auto",
        kprobe="kprobes: not supported by this kernel (CONFIG_KPROBES unset)",
        fentry="fentry: BPF trampolines not available (x)",
    )
    stage, why = b.resolve_stage(IPV6_RCV)
    assert stage is None
    assert "CONFIG_KPROBES unset" in why and "BPF trampolines not available" in why


def test_tracepoint_mode_rejects_function_stages():
    stage, why = backends("tracepoint").resolve_stage(IP_RCV)
    assert stage is None and "--hooks tracepoint" in why


def test_forced_backend_that_cannot_work_is_fatal():
    kernel = features(kprobe="kprobes: not supported by this kernel (CONFIG_KPROBES unset)")
    plan = make_plan(Config(hooks="kprobe", stages=("backlog",)), kernel)
    (hooks,) = [f for f in plan.findings if f.name == "hooks"]
    assert hooks.fatal and not hooks.ok
    assert hooks.error.startswith("--hooks kprobe is not possible on this kernel: kprobes")


def test_generated_probe_lines():
    b = backends("kprobe", btf_functions={"ip_rcv_finish"}, protos=FINISH_PROTO)
    stage, _ = b.resolve_stage(IP_RCV)
    text = function_hooks_header(ProgramSpec(stages=(stage,), drops=False, bounds_ns=(1000,)))
    assert "NETLAT_KPROBE_HOOK(ip_rcv, PT_REGS_PARM1, skb_function_hook, 4, -1)" in text
    # the renamed symbol gets an identifier-safe probe name; ip_rcv_finish's skb is its 3rd argument
    assert "NETLAT_KPROBE_HOOK(ip_rcv_finish_isra_0, PT_REGS_PARM3, skb_function_hook, -1, 4)" in text
    assert "NETLAT_KPROBE_HOOK(ip_route_input_noref, PT_REGS_PARM1, skb_function_hook, -1, 4)" in text
    fb = backends(
        "fentry",
        btf_functions={h.target for h in IP_RCV.hooks} | {"ip_rcv_finish"},
        symbols={"ip_rcv_finish": ["ip_rcv_finish"]},
    )
    fstage, why = fb.resolve_stage(IP_RCV)
    assert why is None
    text = function_hooks_header(ProgramSpec(stages=(fstage,), drops=False, bounds_ns=(1000,)))
    assert "NETLAT_FENTRY_HOOK(ip_rcv_finish, 2, skb_function_hook, -1, 4)" in text


RECVMSG = ["struct socket *", "struct msghdr *", "long unsigned int", "int"]
READS = {"sock_def_readable", "inet_recvmsg", "inet6_recvmsg"}


def test_socket_fallback_ends_at_fexit_of_sock_recvmsg():
    """Linux < 6.6: the socket stage runs sock_def_readable -> return of inet(6)_recvmsg."""
    b = backends("fentry", btf_functions=READS, protos={"inet_recvmsg": RECVMSG, "inet6_recvmsg": RECVMSG})
    stage, why = b.resolve_stage(SOCKET_FALLBACK)
    assert why is None and stage is not None
    assert [h.attach_type for h in stage.hooks] == ["fentry", "fexit", "fexit", "raw_tracepoint"]
    text = function_hooks_header(ProgramSpec(stages=(stage,), drops=False, bounds_ns=(1000,)))
    assert "NETLAT_FENTRY_HOOK(sock_def_readable, 0, sock_function_hook, 2, -1)" in text
    # ret after the 4 arguments (sock, msg, size, flags); flags is the 4th
    assert "NETLAT_FEXIT_READ_HOOK(inet_recvmsg, 4, 3, 2)" in text
    assert "NETLAT_FEXIT_READ_HOOK(inet6_recvmsg, 4, 3, 2)" in text


def test_socket_fallback_needs_fexit():
    """A kretprobe would hold an instance per blocked reader: kprobe-only kernels say why."""
    stage, why = backends("kprobe").resolve_stage(SOCKET_FALLBACK)
    assert stage is None and "the return of inet_recvmsg needs fexit" in why


def test_socket_fallback_checks_the_prototype():
    b = backends(
        "fentry",
        btf_functions=READS,
        protos={"inet_recvmsg": RECVMSG[:2] + ["int"], "inet6_recvmsg": RECVMSG},
    )
    stage, why = b.resolve_stage(SOCKET_FALLBACK)
    assert stage is None
    assert why == (
        "fexit: inet_recvmsg takes (struct socket *, struct msghdr *, int) on this kernel; "
        "otel-netlat reads (struct socket *, struct msghdr *, long unsigned int, int)"
    )


def test_real_btf_knows_the_seed_functions():
    """The host kernel's BTF describes every function the seed stages hook."""
    btf = Btf.load()
    for stage in (IP_RCV, IPV6_RCV):
        for hook in stage.hooks:
            assert btf.has_function(hook.target), hook.target


def test_custom_stage_cannot_reuse_a_builtin_tracepoint():
    from otel_netlat.config import CustomHook, CustomStage

    c = CustomStage(
        "mine",
        "receive",
        CustomHook("tracepoint", "net:netif_rx", skb_field="skbaddr"),
        CustomHook("function", "ip_rcv", skb_arg=0),
    )
    plan = make_plan(Config(hooks="auto", custom_stages=(c,)), features())
    (conflict,) = [f for f in plan.findings if f.name == "custom stages"]
    assert conflict.fatal
    assert conflict.error.startswith("custom stage mine: tracepoint net:netif_rx is already used")
