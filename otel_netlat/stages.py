"""The stage table: what each stage measures, from which hook to which, matched how.

This table is the single source for the BPF program's roles (``-DNETLAT_START_<hook>=<id>``),
for ``check``'s report, for the metric attribute ``netlat.stage`` and for the README's
stage table. The C has one probe per hook and no per-stage copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


@dataclass(frozen=True)
class Hook:
    """A kernel hook and the object it hands us.

    ``obj`` is ``skb`` (the tracepoint's skb address), ``sock`` (the socket address), or
    ``sock_queue_tail`` (the skb at the tail of the socket's receive queue).
    """

    kind: str
    target: str
    obj: str

    @property
    def macro_suffix(self) -> str:
        """``net:netif_rx`` → ``net_netif_rx`` (the -D flag names the hook this way)."""
        return self.target.replace(":", "_")

    def __str__(self) -> str:
        return f"{self.kind} {self.target}"


@dataclass(frozen=True)
class Stage:
    """A named pair of hooks, start → end, with a direction."""

    name: str
    id: int
    direction: str
    start: Hook
    end: Hook
    meaning: str
    matched_by: str

    @property
    def hooks(self) -> tuple[Hook, Hook]:
        return (self.start, self.end)


def tp(target: str, obj: str = "skb") -> Hook:
    return Hook("tracepoint", target, obj)


BACKLOG = Stage(
    name="backlog",
    id=0,
    direction="receive",
    start=tp("net:netif_rx"),
    end=tp("net:netif_receive_skb"),
    meaning="time queued in a CPU backlog (loopback, veth and other non-NAPI receive paths)",
    matched_by="skb address",
)
STACK = Stage(
    name="stack",
    id=1,
    direction="receive",
    start=tp("net:netif_receive_skb"),
    end=tp("sock:sk_data_ready", "sock_queue_tail"),
    meaning="protocol processing, from the start of __netif_receive_skb_core until the data "
    "is queued on its socket and the reader is woken",
    matched_by="skb address: the tail of the socket's receive queue at sk_data_ready",
)
SOCKET = Stage(
    name="socket",
    id=2,
    direction="receive",
    start=tp("sock:sk_data_ready", "sock"),
    end=tp("sock:sock_recv_length", "sock"),
    meaning="how long the oldest notified data waited in the socket until the application read it",
    matched_by="socket address and inode (a reused socket address never pairs)",
)
QDISC = Stage(
    name="qdisc",
    id=3,
    direction="transmit",
    start=tp("net:net_dev_queue"),
    end=tp("net:net_dev_start_xmit"),
    meaning="time in the queueing discipline, until the driver is handed the packet",
    matched_by="skb address",
)

BUILTIN_STAGES: tuple[Stage, ...] = (BACKLOG, STACK, SOCKET, QDISC)
STAGES_BY_NAME = {s.name: s for s in BUILTIN_STAGES}

#: Drops are not a latency stage but can be selected like one.
DROPS = "drops"
DROP_HOOK = tp("skb:kfree_skb")
#: Ends pending skb starts that were freed before their end hook.
FREE_HOOK = tp("skb:consume_skb")
STAGE_NAMES: tuple[str, ...] = (*STAGES_BY_NAME, DROPS)

#: Tracepoint fields each hook's C reads; a kernel whose format lacks one cannot use it.
REQUIRED_FIELDS = {
    "net:netif_rx": ("skbaddr",),
    "net:netif_receive_skb": ("skbaddr",),
    "net:net_dev_queue": ("skbaddr",),
    "net:net_dev_start_xmit": ("skbaddr",),
    "sock:sk_data_ready": ("skaddr", "family", "protocol"),
    "sock:sock_recv_length": ("sk", "ret", "flags"),
    "skb:kfree_skb": ("skbaddr", "protocol", "reason"),
    "skb:consume_skb": ("skbaddr",),
}


def tracefs_root() -> Path | None:
    """The mounted tracefs, if any."""
    for root in TRACEFS_ROOTS:
        if (root / "events").is_dir():
            return root
    return None


def tracepoint_problem(target: str, root: Path | None = None) -> str | None:
    """Why a tracepoint cannot be used here, or None when it can."""
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
    missing = [f for f in REQUIRED_FIELDS.get(target, ()) if f not in fields]
    if missing:
        return f"tracepoint {target} lacks field(s) {', '.join(missing)} on this kernel"
    return None


def stage_problem(stage: Stage, root: Path | None = None) -> str | None:
    """Why a stage cannot attach on this kernel (first missing hook), or None."""
    for hook in stage.hooks:
        problem = tracepoint_problem(hook.target, root)
        if problem:
            return problem
    return None
