"""Fuzzed BTF: a truncated or hostile blob gets a one-line BtfError, fast, in bounded memory.

The agent reads the kernel's BTF at start-up; a corrupt file (a truncated copy, a broken
kernel build, a hostile bind mount over /sys/kernel/btf) must stop it with one line — a
:class:`BtfError`, which ``run`` prints and ``check`` reports — never a traceback, a hang or
an allocation sized by a count the file declares. Hypothesis builds blobs three ways: a
small valid BTF with every type the agent asks about, then edited word by word (ids
pointing anywhere or at themselves, huge counts, sizes and lengths, names out of range);
records made up from scratch; and prefixes of the real /sys/kernel/btf/vmlinux. Every
question the agent asks of BTF is put to each blob under a time limit and an address-space
cap; for the generated blobs, tracemalloc's peak is held to a few times the blob's size.
"""

from __future__ import annotations

import functools
import resource
import signal
import struct
import tracemalloc
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_netlat.kernel import btf as btf_mod
from otel_netlat.kernel import offsets as offsets_mod
from otel_netlat.kernel.btf import Btf, BtfError
from otel_netlat.kernel.offsets import (
    OFFSETS,
    OPTIONAL_OFFSETS,
    drop_reason_names,
    read_kernel_info,
    resolve_offsets,
)

#: Generated cases per test.
CASES = {"edited": 200, "made_up": 160, "real_prefix": 24}
#: Seconds any one blob may take, all questions included (a real vmlinux prefix: ~0.2 s).
TIME_LIMIT_S = 5.0
#: Peak allocation allowed for a blob of n bytes: a few times n, plus what any answer may
#: need (c_struct's text is capped at MAX_C_MEMBERS members: under 0.5 MB).
ALLOWED_BYTES = (4, 1 << 20)

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
#: Words after the 3-word header: fixed, then per vlen entry (the kernel's btf.h).
EXTRA_WORDS = {INT: (1, 0), ARRAY: (3, 0), STRUCT: (0, 3), UNION: (0, 3), ENUM: (0, 2), FUNC_PROTO: (0, 2)}
EXTRA_WORDS |= {VAR: (1, 0), DATASEC: (0, 3), DECL_TAG: (1, 0), ENUM64: (0, 3)}


def fuzz(cases: int) -> settings:
    """Reproducible in CI: a fixed seed, no example database, no per-case deadline (ours is below)."""
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------- limits


class Hang(Exception):
    """A blob took longer than TIME_LIMIT_S (raised from SIGALRM, so no BTF code catches it)."""


@contextmanager
def contained(seconds: float, address_space: int = 1 << 30) -> Iterator[None]:
    """At most ``seconds``, and ``address_space`` more bytes of it: a regression (a loop, an
    allocation sized by a count in the file) fails the case instead of stalling or
    exhausting the shared machine."""

    def expire(_signum: int, _frame: object) -> None:
        raise Hang(f"no answer within {seconds} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = used + address_space if hard == resource.RLIM_INFINITY else min(used + address_space, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def allocation_limit(blob: bytes) -> Iterator[None]:
    """tracemalloc's peak over the block is bounded by the blob's size. Traced only here:
    tracing Hypothesis's own work would slow it fivefold."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    factor, constant = ALLOWED_BYTES
    assert peak <= factor * len(blob) + constant, f"{peak} bytes allocated for a {len(blob)}-byte blob"


# --------------------------------------------------------------------------- the agent's questions

EVENTS = ("kfree_skb", "netif_receive_skb", "net_dev_queue")
FUNCTIONS = ("ip_rcv", "inet_recvmsg", "kfree_skb")
Question = Callable[[Btf], object]


def agent_questions() -> list[Question]:
    """What start-up asks of BTF (offsets, drop reasons, C types, hook prototypes), once each."""
    questions: list[Question] = [resolve_offsets, drop_reason_names]
    fields = dict.fromkeys((name, path) for name, path, _ in (*OFFSETS.values(), *OPTIONAL_OFFSETS.values()))
    for name, path in fields:
        questions += [
            lambda b, n=name, p=path: b.offsetof(n, p),
            lambda b, n=name, p=path: b.field_size(n, p),
            lambda b, n=name, p=path: b.field_type(n, p),
        ]
    for name in dict.fromkeys(name for name, _ in fields):
        questions += [lambda b, n=name: b.members(n), lambda b, n=name: b.c_struct(n)]
    questions += [lambda b: b.sizeof("netdev_queue"), lambda b: b.sizeof("u32")]
    questions += [lambda b: b.enum_values("skb_drop_reason"), lambda b: b.c_enum("skb_drop_reason")]
    questions += [lambda b: b.c_struct("pt_regs"), lambda b: b.c_enum("enum e64")]
    questions += [lambda b, e=event: b.tracepoint_args(e) for event in EVENTS]
    questions += [lambda b, f=fn: (b.has_function(f), b.function_args(f)) for fn in FUNCTIONS]
    return questions


AGENT_QUESTIONS = agent_questions()
#: Per type id, for the first ids of a blob: every decoder, whatever the kind.
TYPE_QUESTIONS: list[Callable[[Btf, int], object]] = [
    Btf.type_size,
    Btf.type_spelling,
    Btf.members_of,
    Btf.enum_values_of,
]
TYPE_IDS = 40


def ask_everything(blob: bytes) -> Counter[str]:
    """Every question to ``blob``; each is answered or raises a one-line BtfError."""
    outcome: Counter[str] = Counter()
    try:
        btf = Btf(blob, "fuzzed")
    except BtfError as e:
        assert_one_line(e)
        outcome["refused"] += 1
        return outcome
    calls = [lambda q=q: q(btf) for q in AGENT_QUESTIONS]
    calls += [
        lambda q=q, t=tid: q(btf, t) for tid in range(min(len(btf), TYPE_IDS) + 2) for q in TYPE_QUESTIONS
    ]
    for call in calls:
        try:
            call()
            outcome["answered"] += 1
        except BtfError as e:
            assert_one_line(e)
            outcome["error"] += 1
    return outcome


def assert_one_line(e: BtfError) -> None:
    assert str(e) and len(str(e).splitlines()) == 1, repr(str(e))


# --------------------------------------------------------------------------- writing BTF


class Blob:
    """BTF written record by record as 32-bit words, remembering where each record starts."""

    def __init__(self) -> None:
        self.strs = bytearray(b"\0")
        self.offsets: dict[bytes, int] = {b"": 0}
        self.words: list[int] = []
        self.starts: list[int] = []

    def off(self, name: str | bytes) -> int:
        raw = name.encode() if isinstance(name, str) else name
        if raw not in self.offsets:
            self.offsets[raw] = len(self.strs)
            self.strs += raw + b"\0"
        return self.offsets[raw]

    def add(
        self, kind: int, name: str | bytes = "", vlen: int = 0, ref: int = 0, extra=(), flag=False
    ) -> int:
        """A record; ``ref`` is its size or type; returns its type id."""
        self.starts.append(len(self.words))
        self.words += [self.off(name), (int(flag) << 31) | (kind << 24) | vlen, ref, *extra]
        return len(self.starts)

    def int_(self, name: str, size: int) -> int:
        return self.add(INT, name, ref=size, extra=[size * 8])

    def composite(self, name: str, size: int, members: list[tuple[str, int, int]], kind: int = STRUCT) -> int:
        extra = [w for n, t, bits in members for w in (self.off(n), t, bits)]
        return self.add(kind, name, vlen=len(members), ref=size, extra=extra, flag=True)

    def blob(self, header: dict[int, int] | None = None) -> bytes:
        """The file; ``header`` replaces header fields by index (0 magic ... 7 str_len)."""
        types = struct.pack(f"<{len(self.words)}I", *(w & 0xFFFFFFFF for w in self.words))
        fields = [0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strs)]
        for index, value in (header or {}).items():
            fields[index] = value & (0xFFFF if index == 0 else 0xFF if index < 3 else 0xFFFFFFFF)
        return struct.pack("<HBBIIIII", *fields) + types + bytes(self.strs)


def skeleton() -> Blob:
    """A small BTF holding every type the agent asks about, laid out as a compiler would."""
    b = Blob()
    u8, u16, u32, u64 = (
        b.int_(n, s) for n, s in (("unsigned char", 1), ("u16", 2), ("unsigned int", 4), ("u64", 8))
    )
    vptr = b.add(PTR)
    u32_t = b.add(TYPEDEF, "u32", ref=u32)
    net_ptr = b.composite("possible_net_t", 8, [("net", vptr, 0)])
    head = b.composite("sk_buff_head", 16, [("next", vptr, 0), ("prev", vptr, 64)])
    dev = b.composite("", 8, [("dev", vptr, 0), ("dev_scratch", u64, 0)], kind=UNION)
    skb = b.composite(
        "sk_buff",
        56,
        [("head", vptr, 0), ("data", vptr, 64), ("network_header", u16, 128), ("protocol", u16, 144)]
        + [("", dev, 192), ("skb_iif", u32_t, 256), ("prev", vptr, 320), ("queue_mapping", u16, 384)],
    )
    name = b.add(ARRAY, extra=[u8, u32, 16])
    b.composite(
        "net_device",
        40,
        [("ifindex", u32, 0), ("nd_net", net_ptr, 64), ("name", name, 128), ("_tx", vptr, 256)],
    )
    b.composite("net", 4, [("ns", b.composite("ns_common", 4, [("inum", u32, 0)]), 0)])
    common = b.composite(
        "sock_common", 16, [("skc_net", net_ptr, 0), ("skc_family", u16, 64), ("skc_state", u8, 80)]
    )
    b.composite(
        "sock", 48, [("__sk_common", common, 0), ("sk_receive_queue", head, 128), ("sk_socket", vptr, 256)]
        + [("sk_protocol", u16, 320)]
    )  # fmt: skip
    b.composite("socket", 8, [("sk", vptr, 0)])
    b.composite("udp_sock", 16, [("reader_queue", head, 0)])
    b.composite("netdev_queue", 8, [("qdisc", vptr, 0)])
    b.composite("Qdisc", 8, [("enqueue", vptr, 0)])
    reasons = ("SKB_DROP_REASON_NOT_SPECIFIED", 2, "SKB_DROP_REASON_NO_SOCKET", 3, "SKB_DROP_REASON_MAX", 4)
    b.add(
        ENUM, "skb_drop_reason", vlen=3, ref=4, extra=[b.off(w) if isinstance(w, str) else w for w in reasons]
    )
    b.add(ENUM64, "e64", vlen=1, ref=8, extra=[b.off("BIG"), 0xFFFFFFE0, 0xFFFFFFFF], flag=True)
    b.composite("pt_regs", 16, [("di", u64, 0), ("si", u64, 64)])
    skb_ptr = b.add(PTR, ref=skb)
    proto = b.add(FUNC_PROTO, vlen=2, extra=[b.off("__data"), vptr, b.off("skb"), skb_ptr])
    b.add(TYPEDEF, "btf_trace_kfree_skb", ref=b.add(PTR, ref=proto))
    b.add(FUNC, "ip_rcv", ref=b.add(FUNC_PROTO, vlen=1, ref=u32, extra=[b.off("skb"), skb_ptr]))
    b.add(VAR, "some_var", ref=u32, extra=[1])
    b.add(DATASEC, ".data", vlen=1, ref=4, extra=[len(b.starts), 0, 4])
    return b


SKELETON = skeleton()


def test_skeleton_answers_the_agent():
    """The blobs to be edited start valid: the questions it has types for are answered right."""
    btf = Btf(SKELETON.blob())
    assert btf.offsetof("sock", "__sk_common.skc_net.net") == 0
    assert (btf.offsetof("sk_buff", "dev"), btf.field_size("sk_buff", "skb_iif")) == (24, 4)
    assert btf.enum_values("skb_drop_reason")["SKB_DROP_REASON_NO_SOCKET"] == 3
    assert btf.tracepoint_args("kfree_skb") == ["struct sk_buff *"]
    assert btf.function_args("ip_rcv") == ["struct sk_buff *"]
    assert "\tunsigned long long si;" in btf.c_struct("pt_regs")
    assert btf.sizeof("netdev_queue") == 8
    outcome = ask_everything(SKELETON.blob())
    assert outcome["answered"] >= 150, outcome


def test_read_kernel_info_without_drop_reasons_is_a_btf_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An enum skb_drop_reason with no enumerators (a hostile or broken BTF) must be a BtfError."""
    b = Blob()
    b.add(ENUM, "skb_drop_reason", ref=4)
    (tmp_path / "btf").write_bytes(b.blob())
    monkeypatch.setattr(offsets_mod, "resolve_offsets", lambda btf: {})  # the offsets are not the point
    try:
        with pytest.raises(BtfError):
            read_kernel_info(str(tmp_path / "btf"))
    finally:
        btf_mod.kernel_btf.cache_clear()


# --------------------------------------------------------------------------- hostile words

#: Values a count, size, id, offset or length must survive.
EDGE_WORDS = (0, 1, 3, 0xFF, 0xFFFF, 0x10000, 1 << 24, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@functools.cache  # strategies are costly to build: one per shape of blob
def hostile_word(ntypes: int, nstrs: int) -> st.SearchStrategy[int]:
    """An id near the table (itself, one past the end), a string offset in or just out of the
    section, an info word of any kind and vlen, an edge value or any u32."""
    return st.one_of(
        st.integers(0, ntypes + 1),
        st.integers(0, nstrs + 2),
        st.builds(
            lambda kind, flag, vlen: (flag << 31) | (kind << 24) | vlen,
            st.integers(0, 31),
            st.integers(0, 1),
            st.sampled_from((0, 1, 2, 3, 0xFFFF)),
        ),
        st.sampled_from(EDGE_WORDS),
        st.integers(0, 0xFFFFFFFF),
    )


HEADER_EDITS = st.dictionaries(
    st.integers(0, 7),
    st.one_of(st.sampled_from(EDGE_WORDS), st.sampled_from((0x9FEB, 24, 23, 28))),
    max_size=2,
)


@st.composite
def byte_edits(draw: st.DrawFn, blob: bytes) -> bytes:
    """The file cut short, a few bytes changed, or junk appended (each now and then)."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(0, 2))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.sampled_from(b"\0\n\xff\x01A"))
    if draw(st.integers(0, 4)) == 0:  # cut anywhere, or just short of the end
        data = (
            data[: draw(st.integers(0, len(data)))]
            if draw(st.booleans())
            else data[: -draw(st.integers(1, 16))]
        )
    if draw(st.integers(0, 6)) == 0:
        data += draw(st.binary(max_size=16))
    return bytes(data)


@st.composite
def edited_skeletons(draw: st.DrawFn) -> bytes:
    """The skeleton with 1-4 words replaced; a type now and then made to point at itself."""
    b = skeleton()
    word = hostile_word(len(b.starts), len(b.strs))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 3)) == 0:  # a loop: a type's ref (or first member's type) is itself
            tid = draw(st.integers(1, len(b.starts)))
            b.words[b.starts[tid - 1] + draw(st.sampled_from((2, 4)))] = tid
        else:
            b.words[draw(st.integers(0, len(b.words) - 1))] = draw(word)
    blob = b.blob(draw(HEADER_EDITS) if draw(st.integers(0, 5)) == 0 else None)
    return draw(byte_edits(blob)) if draw(st.integers(0, 3)) == 0 else blob


NAMES = st.one_of(
    st.sampled_from(
        ["sk_buff", "pt_regs", "skb_drop_reason", "btf_trace_kfree_skb", "ip_rcv", "head", "net"]
    ),
    st.sampled_from(["", "a\nb", "x" * 2000, "int", "unsigned int", "u32", "__data", "skb"]),
    st.binary(max_size=6).filter(lambda raw: b"\0" not in raw),
)
KNOWN_KINDS = st.sampled_from(sorted(EXTRA_WORDS) + [PTR, FWD, TYPEDEF, CONST, FUNC])
#: Now and then any kind (an unknown one ends the index). A middle value picks it: Hypothesis
#: favours the ends of a range.
KINDS = st.integers(0, 7).flatmap(lambda n: st.integers(0, 31) if n == 3 else KNOWN_KINDS)
#: A vlen over 3 leaves the record short (its entries are not written): now and then.
VLENS = st.sampled_from((0, 1, 2, 3) * 2 + (0xFFFF, 255))


@st.composite
def made_up_blobs(draw: st.DrawFn) -> bytes:
    """1-10 records of any kind with any values; a vlen over 3 leaves the record short."""
    b = Blob()
    count = draw(st.integers(1, 10))
    word = hostile_word(count, 64)
    for _ in range(count):
        kind, vlen = draw(KINDS), draw(VLENS)
        entries = EXTRA_WORDS.get(kind, (0, 0))
        size = entries[0] + entries[1] * min(vlen, 3)
        extra = draw(st.lists(word, min_size=size, max_size=size))
        b.add(kind, draw(NAMES), vlen, draw(word), extra, flag=draw(st.booleans()))
    blob = b.blob(draw(HEADER_EDITS) if draw(st.integers(0, 4)) == 0 else None)
    return draw(byte_edits(blob)) if draw(st.integers(0, 2)) == 0 else blob


def check_blob(blob: bytes, outcomes: Counter[str]) -> None:
    with contained(TIME_LIMIT_S), allocation_limit(blob):
        outcomes.update(ask_everything(blob))


def test_fuzzed_edits_of_a_valid_blob():
    outcomes: Counter[str] = Counter()

    @fuzz(CASES["edited"])
    @given(edited_skeletons())
    def case(blob: bytes) -> None:
        outcomes["cases"] += 1
        check_blob(blob, outcomes)

    case()
    assert outcomes["cases"] >= CASES["edited"], outcomes
    assert min(outcomes["refused"], outcomes["answered"], outcomes["error"]) > 0, outcomes


def test_fuzzed_made_up_blobs():
    outcomes: Counter[str] = Counter()

    @fuzz(CASES["made_up"])
    @given(made_up_blobs())
    def case(blob: bytes) -> None:
        outcomes["cases"] += 1
        check_blob(blob, outcomes)

    case()
    assert outcomes["cases"] >= CASES["made_up"], outcomes
    assert min(outcomes["refused"], outcomes["answered"]) > 0, outcomes


# --------------------------------------------------------------------------- what fuzzing found


def pointer_loop() -> Blob:
    b = Blob()
    b.add(PTR, ref=1)  # a pointer to itself, as the parameter of ip_rcv
    b.add(FUNC, "ip_rcv", ref=b.add(FUNC_PROTO, vlen=1, extra=[b.off("skb"), 1]))
    return b


def anonymous_loop() -> Blob:
    b = Blob()
    b.composite("sk_buff", 8, [("", 1, 0)])  # its one member is itself, anonymous
    return b


def shared_anonymous(levels: int = 30) -> Blob:
    """Each struct has two anonymous members of the next: 2^30 paths, 30 structs."""
    b = Blob()
    b.int_("unsigned int", 4)
    for i in range(levels):  # struct i is type id i + 2
        b.composite("sk_buff" if i == 0 else "", 8, [("", i + 3, 0)] * 2 if i < levels - 1 else [])
    return b


def doubling_struct(levels: int = 25) -> Blob:
    """Each struct holds two of the next, laid out right: written out, 2^25 members."""
    b = Blob()
    b.int_("unsigned int", 4)
    for i in range(levels):
        size, inner = 4 << (levels - i), i + 3 if i < levels - 1 else 1
        b.composite("pt_regs" if i == 0 else "", size, [("a", inner, 0), ("b", inner, size * 4)])
    return b


def array_chain(length: int = 5000) -> Blob:
    b = Blob()
    b.int_("unsigned int", 4)
    for i in range(length):  # array i + 2 of one element of type i + 1
        b.add(ARRAY, extra=[i + 1, 1, 1])
    b.add(TYPEDEF, "netdev_queue", ref=length + 1)
    return b


def repeated_names() -> Blob:
    """200,000 copies of "pt_regs" in the strings (one scan of all types per copy: quadratic)."""
    b = Blob()
    for _ in range(2000):
        b.int_("pt_regs", 4)
    b.strs += b"pt_regs\0" * 200_000
    return b


def name_past_strings() -> Blob:
    b = Blob()
    b.words[b.starts[b.int_("int", 4) - 1]] = 4096  # the name offset
    return b


def unterminated_strings() -> Blob:
    b = Blob()
    b.int_("int", 4)
    b.strs += b"x" * 100_000  # a name that never ends (each member named by it was a copy)
    return b


def enum_named(name: bytes, enumerator: bytes) -> Blob:
    b = Blob()
    b.add(ENUM, name, vlen=1, ref=4, extra=[b.off(enumerator), 1])
    return b


def member_named(name: str) -> Blob:
    b = Blob()
    b.composite("pt_regs", 4, [(name, b.int_("unsigned int", 4), 0)])
    return b


def struct_in_itself() -> Blob:
    b = Blob()
    b.composite("pt_regs", 8, [("a", 1, 0)])  # its one member is itself
    return b


#: One case per crash, hang or wrong answer the fuzzing found, fixed since: the blob, the
#: question, and the start of the one-line BtfError now given ("" for an answer).
FOUND: dict[str, tuple[Callable[[], Blob], Question, str]] = {
    "pointer-loop": (
        pointer_loop,
        lambda b: b.function_args("ip_rcv"),
        "BTF file fuzzed is corrupt: pointers",
    ),
    "anonymous-loop": (
        anonymous_loop,
        lambda b: b.offsetof("sk_buff", "head"),
        "struct sk_buff has no field",
    ),
    "shared-anonymous": (shared_anonymous, lambda b: b.offsetof("sk_buff", "head"), "struct sk_buff has no"),
    "struct-in-itself": (
        struct_in_itself,
        lambda b: b.c_struct("pt_regs"),
        "BTF file fuzzed is corrupt: arrays and members",
    ),
    "doubling-struct": (doubling_struct, lambda b: b.c_struct("pt_regs"), "struct (anonymous): more than"),
    "array-chain": (array_chain, lambda b: b.sizeof("netdev_queue"), "BTF file fuzzed is corrupt: arrays"),
    "repeated-names": (repeated_names, lambda b: b.sizeof("pt_regs"), ""),
    "empty-type-section": (Blob, lambda b: b.sizeof("pt_regs"), "kernel BTF has no type 'pt_regs'"),
    "name-past-strings": (
        name_past_strings,
        lambda b: b.name(1),
        "BTF file fuzzed is corrupt: string offset",
    ),
    "unterminated-strings": (unterminated_strings, len, "BTF file fuzzed is corrupt: its string section"),
    "newline-in-name": (
        lambda: enum_named(b"a\nb", b"A"),
        lambda b: b.members_of(1),
        "kernel BTF type enum a b",
    ),
    "enumerator-not-c": (
        lambda: enum_named(b"skb_drop_reason", b"A = 1; int x"),
        lambda b: b.c_enum("skb_drop_reason"),
        "enum skb_drop_reason: name 'A = 1; int x' is not a C identifier",
    ),
    "member-not-c": (
        lambda: member_named("x; int y"),
        lambda b: b.c_struct("pt_regs"),
        "struct pt_regs: name",
    ),
}


@pytest.mark.parametrize(("build", "question", "start"), list(FOUND.values()), ids=list(FOUND))
def test_found_by_fuzzing(build: Callable[[], Blob], question: Question, start: str):
    blob = build().blob()
    with contained(TIME_LIMIT_S), allocation_limit(blob):
        try:
            question(Btf(blob, "fuzzed"))
            error = ""
        except BtfError as e:
            error = str(e)
    assert error.startswith(start) and (error == "") == (start == ""), error
    assert len(error.splitlines()) <= 1, error


# --------------------------------------------------------------------------- the real file


@pytest.fixture(scope="module")
def vmlinux() -> bytes:
    """The running kernel's BTF (world-readable; the agent needs it, so it must be there)."""
    return Path(btf_mod.DEFAULT_PATH).read_bytes()


def real_prefix(real: bytes, fraction: float, how: str) -> bytes:
    """vmlinux cut at ``fraction`` of it: as it is (``raw``: the header then over-announces),
    or its type section cut between two records (``between``: the later types are missing)
    or inside one (``inside``), with the header and string section made to fit."""
    if how == "raw":
        return real[: int(fraction * len(real))]
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", real, 4)
    starts = real_record_starts(real)
    kept = 4 * starts[int(fraction * (len(starts) - 1))] + (8 if how == "inside" else 0)
    types = real[hdr_len + type_off : hdr_len + type_off + kept]
    strs = real[hdr_len + str_off : hdr_len + str_off + str_len]
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, kept, kept, str_len) + types + strs


@functools.cache
def real_record_starts(real: bytes) -> array:
    """Where each record of vmlinux starts, in words (the index itself is what is trusted here)."""
    return Btf(real)._offsets  # noqa: SLF001


def test_fuzzed_prefixes_of_the_real_btf(vmlinux: bytes):
    """No tracemalloc here: it slows the 130k-type index fifteenfold (the memory: below)."""
    outcomes: Counter[str] = Counter()

    @fuzz(CASES["real_prefix"])
    @given(st.floats(0, 1), st.sampled_from(("raw", "between", "inside")))  # a short repr, not the blob
    def case(fraction: float, how: str) -> None:
        outcomes["cases"] += 1
        with contained(TIME_LIMIT_S):
            outcomes.update(ask_everything(real_prefix(vmlinux, fraction, how)))

    case()
    assert outcomes["cases"] >= CASES["real_prefix"], outcomes
    assert outcomes["refused"] > 0 and outcomes["answered"] > 0, outcomes


def test_real_btf_costs_less_than_its_size(vmlinux: bytes):
    """The index of 130k types and the agent's questions: under the same bound as the fuzzed blobs."""
    with contained(60), allocation_limit(vmlinux):
        btf = Btf(vmlinux)
        btf.c_struct("net_device"), btf.offsetof("sk_buff", "head"), btf.enum_values("skb_drop_reason")
