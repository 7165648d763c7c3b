"""User-defined stages: the ``custom_stages`` list of the config file, its schema and checks.

Only the shape is checked here (names, kinds, identifiers, argument range); whether the
tracepoint or function exists on this kernel is the start-up plan's question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from otel_netlat.config.errors import Src, fail
from otel_netlat.config.parsers import parse_choice, parse_integer, parse_text
from otel_netlat.config.yaml_file import expect_mapping

__all__ = ["CUSTOM_STAGES_KEY", "CustomHook", "CustomStage", "parse_custom_stages"]

#: The top-level YAML key; YAML only, as a stage does not fit in a flag.
CUSTOM_STAGES_KEY = "custom_stages"
DIRECTIONS = ("receive", "transmit")
CUSTOM_HOOK_KINDS = ("tracepoint", "function")
MAX_SKB_ARG = 5  # arguments 0-5 are the ones passed in registers on every BPF architecture
#: The key that says where a hook of each kind finds its skb (the other kind's is refused).
_SKB_KEY = {"function": "skb_arg", "tracepoint": "skb_field"}

_STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class CustomHook:
    """Where a custom stage starts or ends.

    ``function`` hooks fire at the entry of the function (also for the end hook: a stage
    ends when the packet reaches the end function). The skb is argument ``skb_arg`` of a
    function, or field ``skb_field`` of a tracepoint; the other one is ``None``.
    """

    kind: str
    target: str
    skb_arg: int | None = None
    skb_field: str | None = None


@dataclass(frozen=True)
class CustomStage:
    """A user-defined stage from the ``custom_stages`` list of the config file."""

    name: str
    direction: str
    start: CustomHook
    end: CustomHook


def parse_custom_stages(value: object, file: str, builtin: Sequence[str]) -> tuple[CustomStage, ...]:
    """The ``custom_stages`` list of ``file``; a name may not repeat one of ``builtin``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        fail(Src(f"{file}: {CUSTOM_STAGES_KEY}", False), "expected a list of stages", value)
    stages: list[CustomStage] = []
    for i, item in enumerate(value):
        path = f"{CUSTOM_STAGES_KEY}[{i}]"
        keys = ("name", "direction", "start", "end")
        entry = expect_mapping(item, file, path, keys, required=keys)
        defined = [s.name for s in stages]
        name = _stage_name(entry["name"], Src(f"{file}: {path}.name", False), builtin, defined)
        direction = parse_choice(entry["direction"], Src(f"{file}: {path}.direction", False), DIRECTIONS)
        start = _hook(entry["start"], file, f"{path}.start")
        end = _hook(entry["end"], file, f"{path}.end")
        if (start.kind, start.target) == (end.kind, end.target):
            fail(
                Src(f"{file}: {path}.end", False), "the end hook must differ from the start hook", end.target
            )
        stages.append(CustomStage(name, direction, start, end))
    return tuple(stages)


def _stage_name(value: object, src: Src, builtin: Sequence[str], defined: Sequence[str]) -> str:
    """A new stage name: the metric label and the BPF side both rely on its spelling."""
    name = parse_text(value, src)
    if not _STAGE_NAME.fullmatch(name):
        fail(src, "a stage name is a lowercase letter then up to 31 of [a-z0-9_]", name)
    if name in builtin:
        fail(src, "a custom stage cannot reuse a built-in stage name", name)
    if name in defined:
        fail(src, "a custom stage with this name is already defined", name)
    return name


def _hook(value: object, file: str, path: str) -> CustomHook:
    """The ``start`` or ``end`` hook at ``path``: a tracepoint or a function, and where its skb is."""
    entry = expect_mapping(value, file, path, ("kind", "target", *_SKB_KEY.values()), ("kind", "target"))

    def src(key: str) -> Src:
        return Src(f"{file}: {path}.{key}", False)

    kind = parse_choice(entry["kind"], src("kind"), CUSTOM_HOOK_KINDS)
    target = _target(kind, parse_text(entry["target"], src("target")), src("target"))
    other = next(k for k in CUSTOM_HOOK_KINDS if k != kind)
    if (foreign := _SKB_KEY[other]) in entry:
        problem = f"applies to {other} hooks; a {kind} names its skb with {_SKB_KEY[kind]}"
        fail(src(foreign), problem, entry[foreign])
    if kind == "tracepoint":
        skb_field = parse_text(entry.get("skb_field", "skbaddr"), src("skb_field"))
        if not _IDENTIFIER.fullmatch(skb_field):
            fail(src("skb_field"), "expected a tracepoint field name (a C identifier)", skb_field)
        return CustomHook(kind, target, skb_field=skb_field)
    skb_arg = parse_integer(entry.get("skb_arg", 0), src("skb_arg"), 0, MAX_SKB_ARG)
    return CustomHook(kind, target, skb_arg=skb_arg)


def _target(kind: str, target: str, src: Src) -> str:
    """A tracepoint as ``GROUP:EVENT``, or a bare function name: what the attach code expects."""
    if kind == "tracepoint":
        group, sep, event = target.partition(":")
        if not (sep and _IDENTIFIER.fullmatch(group) and _IDENTIFIER.fullmatch(event)):
            fail(src, "expected a tracepoint as GROUP:EVENT, e.g. 'net:netif_rx'", target)
    elif not _IDENTIFIER.fullmatch(target):
        fail(src, "expected a bare kernel function name (a C identifier), e.g. 'ip_rcv'", target)
    return target
