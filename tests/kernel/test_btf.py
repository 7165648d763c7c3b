"""Tests for otel_netlat.kernel.btf against bpftool's reading of the same kernel BTF.

The agent trusts these offsets blindly (a wrong one reads the wrong kernel memory, silently),
so the running kernel's structs are checked member by member against an independent reader:
``bpftool btf dump file /sys/kernel/btf/vmlinux format raw``. bpftool is required: without it
these tests fail, they do not skip. Hand-built BTF blobs cover what vmlinux may not show
(every kind in the numbering, the old bitfield encoding, broken files).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from otel_netlat.kernel import btf as btf_mod
from otel_netlat.kernel.btf import Btf, BtfError, Member
from otel_netlat.stages.table import RAW_ARGS

VMLINUX = btf_mod.DEFAULT_PATH

# The fields the agent reads (struct, dotted path); several sit inside anonymous members.
AGENT_FIELDS = [
    ("sk_buff", "head"),
    ("sk_buff", "data"),
    ("sk_buff", "len"),
    ("sk_buff", "protocol"),
    ("sk_buff", "network_header"),
    ("sk_buff", "transport_header"),
    ("sk_buff", "dev"),
    ("sk_buff", "skb_iif"),
    ("sock", "__sk_common.skc_net"),
    ("sock", "__sk_common.skc_family"),
    ("sock", "sk_receive_queue"),
    ("sock", "sk_receive_queue.prev"),
    ("sock", "sk_socket"),
    ("sk_buff_head", "prev"),
    ("net_device", "ifindex"),
    ("net_device", "name"),
    ("net_device", "nd_net"),
    ("net", "ns"),
    ("net", "ns.inum"),
    ("ns_common", "inum"),
    ("socket_alloc", "vfs_inode"),
    ("inode", "i_ino"),
]


# -- bpftool's raw dump, parsed once ----------------------------------------------------------


@dataclass
class RawType:
    """One type as bpftool prints it: ``[id] KIND 'name' key=value ...`` plus its member lines."""

    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, dict[str, str]]] = field(default_factory=list)


_HEAD = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_ITEM = re.compile(r"^\t'([^']*)'(.*)$")
_ATTR = re.compile(r"(\w+)=(\S+)")


def _attrs(text: str) -> dict[str, str]:
    return {k: v.rstrip(",") for k, v in _ATTR.findall(text)}


def parse_bpftool_raw(text: str) -> dict[int, RawType]:
    """Types by id from ``bpftool btf dump ... format raw`` output; ``(anon)`` names become ``""``."""
    types: dict[int, RawType] = {}
    current: RawType | None = None
    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            name = "" if head[3] == "(anon)" else head[3]
            current = types[int(head[1])] = RawType(head[2], name, _attrs(head[4]))
            continue
        item = _ITEM.match(line)
        if item and current is not None:
            current.members.append(("" if item[1] == "(anon)" else item[1], _attrs(item[2])))
    return types


class RawBtf:
    """Lookups over bpftool's dump, written independently of otel_netlat.kernel.btf."""

    MODIFIERS = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}

    def __init__(self, types: dict[int, RawType]) -> None:
        self.types = types
        self.by_name: dict[tuple[str, str], list[int]] = {}
        for tid, t in types.items():
            self.by_name.setdefault((t.kind, t.name), []).append(tid)

    def find(self, kind: str, name: str) -> int:
        ids = self.by_name.get((kind, name))
        assert ids, f"bpftool's dump has no {kind} '{name}'"
        return next((t for t in ids if int(self.types[t].attrs.get("vlen", 0))), ids[0])

    def resolve(self, tid: int) -> int:
        while tid and self.types[tid].kind in self.MODIFIERS:
            tid = int(self.types[tid].attrs["type_id"])
        return tid

    def size(self, tid: int) -> int:
        t = self.types[self.resolve(tid)]
        if t.kind == "PTR":
            return 8
        if t.kind == "ARRAY":
            return int(t.attrs["nr_elems"]) * self.size(int(t.attrs["type_id"]))
        return int(t.attrs["size"])

    def _search(self, tid: int, name: str) -> tuple[int, int] | None:
        """(bit offset, member type id) of ``name`` in composite ``tid``, through anonymous members."""
        members = self.types[tid].members
        for mname, attrs in members:
            if mname == name:
                return int(attrs["bits_offset"]), int(attrs["type_id"])
        for mname, attrs in members:
            inner = self.resolve(int(attrs["type_id"]))
            if not mname and self.types[inner].kind in ("STRUCT", "UNION"):
                found = self._search(inner, name)
                if found:
                    return int(attrs["bits_offset"]) + found[0], found[1]
        return None

    def offset(self, struct_name: str, path: str) -> tuple[int, int]:
        """(byte offset, field size) of a dotted path, summing offsets along the type ids."""
        tid = self.find("STRUCT", struct_name)
        bits, mtype = 0, tid
        for part in path.split("."):
            found = self._search(self.resolve(mtype), part)
            assert found, f"bpftool: struct {struct_name} has no field {path}"
            bits += found[0]
            mtype = found[1]
        assert bits % 8 == 0
        return bits // 8, self.size(mtype)


@pytest.fixture(scope="module")
def raw() -> RawBtf:
    bpftool = shutil.which("bpftool", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if bpftool is None:
        pytest.fail(
            "bpftool is not installed (apt-get install bpftool): it is the reference these tests need"
        )
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", VMLINUX, "format", "raw"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"bpftool failed: {out.stderr.strip()}"
    return RawBtf(parse_bpftool_raw(out.stdout))


@pytest.fixture(scope="module")
def kernel() -> Btf:
    return Btf.load()


@pytest.fixture(scope="module")
def cc() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.fail("no C compiler (cc, gcc or clang) to check the generated C with")
    return compiler


def compile_c(cc: str, source: str, tmp_path: Path) -> None:
    src = tmp_path / "check.c"
    src.write_text(source)
    out = subprocess.run([cc, "-fsyntax-only", "-std=gnu11", str(src)], capture_output=True, text=True)
    assert out.returncode == 0, f"generated C does not compile:\n{out.stderr}\n--- source ---\n{source}"


# -- the running kernel vs bpftool -----------------------------------------------------------


def test_type_count_matches_bpftool(kernel: Btf, raw: RawBtf) -> None:
    assert len(kernel) == max(raw.types)


def test_load_is_fast() -> None:
    best = min(_timed(Btf.load) for _ in range(3))
    assert best < 0.5, f"loading {VMLINUX} took {best:.3f} s; the start-up budget allows well under 0.5 s"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("struct_name", ["sk_buff", "sock", "net_device"])
def test_members_match_bpftool(kernel: Btf, raw: RawBtf, struct_name: str) -> None:
    expected = [
        (name, int(a["bits_offset"]), int(a.get("bitfield_size", 0)), int(a["type_id"]))
        for name, a in raw.types[raw.find("STRUCT", struct_name)].members
    ]
    got = [(m.name, m.bit_offset, m.bitfield_size, m.type_id) for m in kernel.members(struct_name)]
    assert got == expected
    assert all(isinstance(m, Member) for m in kernel.members(f"struct {struct_name}"))


@pytest.mark.parametrize(("struct_name", "path"), AGENT_FIELDS, ids=[f"{s}.{p}" for s, p in AGENT_FIELDS])
def test_agent_field_offsets_match_bpftool(kernel: Btf, raw: RawBtf, struct_name: str, path: str) -> None:
    offset, size = raw.offset(struct_name, path)
    assert kernel.offsetof(struct_name, path) == offset
    assert kernel.field_size(struct_name, path) == size
    assert kernel.has_field(struct_name, path)


@pytest.mark.parametrize("struct_name", ["sk_buff", "sock", "net_device", "sk_buff_head", "pt_regs"])
def test_sizeof_matches_bpftool(kernel: Btf, raw: RawBtf, struct_name: str) -> None:
    assert kernel.sizeof(struct_name) == int(raw.types[raw.find("STRUCT", struct_name)].attrs["size"])


def test_sizeof_of_typedefs_and_ints(kernel: Btf) -> None:
    assert kernel.sizeof("u32") == 4
    assert kernel.sizeof("unsigned int") == 4
    assert kernel.sizeof("long unsigned int") == 8
    assert kernel.sizeof("struct sk_buff") == kernel.sizeof("sk_buff")


def test_drop_reasons_match_bpftool(kernel: Btf, raw: RawBtf) -> None:
    expected = {n: int(a["val"]) for n, a in raw.types[raw.find("ENUM", "skb_drop_reason")].members}
    assert kernel.enum_values("skb_drop_reason") == expected
    # The value differs between kernels (2 on 6.18, 1 on 6.1): compare with bpftool, not a constant.
    assert (
        kernel.enum_values("enum skb_drop_reason")["SKB_DROP_REASON_NOT_SPECIFIED"]
        == (expected["SKB_DROP_REASON_NOT_SPECIFIED"])
    )


def test_enum64_matches_bpftool(kernel: Btf, raw: RawBtf) -> None:
    tid = next((t for t, r in raw.types.items() if r.kind == "ENUM64" and r.name), None)
    if tid is None:
        pytest.skip("this kernel's BTF has no named 64-bit enum")
    rec = raw.types[tid]
    expected = {n: int(a["val"].removesuffix("ULL").removesuffix("LL")) for n, a in rec.members}
    assert kernel.enum_values(rec.name) == expected


def test_has_function(kernel: Btf, raw: RawBtf) -> None:
    func = next(r.name for r in raw.types.values() if r.kind == "FUNC")
    assert kernel.has_function(func)
    assert not kernel.has_function("sk_buff")  # a struct, not a function
    assert not kernel.has_function("otel_netlat_no_such_function")


def _raw_spelling(raw: RawBtf, tid: int) -> str:
    """bpftool's view of a parameter type, spelled as Btf.type_spelling does."""
    t = raw.types[raw.resolve(tid)] if raw.resolve(tid) else None
    if t is None:
        return "void"
    if t.kind == "PTR":
        return _raw_spelling(raw, int(t.attrs["type_id"])) + " *"
    if t.kind in ("STRUCT", "FWD"):
        return f"struct {t.name}"
    if t.kind in ("ENUM", "ENUM64"):
        return f"enum {t.name}"
    return t.name


@pytest.mark.parametrize("target", sorted(RAW_ARGS))
def test_tracepoint_args_match_bpftool(kernel: Btf, raw: RawBtf, target: str) -> None:
    """Raw tracepoint argument types: BTF's btf_trace_<event> prototype minus ``void *__data``."""
    event = target.split(":", 1)[1]
    if ("TYPEDEF", f"btf_trace_{event}") not in raw.by_name:  # e.g. sock:* before Linux 6.6
        assert kernel.tracepoint_args(event) is None
        return
    ptr = raw.types[int(raw.types[raw.find("TYPEDEF", f"btf_trace_{event}")].attrs["type_id"])]
    proto = raw.types[int(ptr.attrs["type_id"])]
    assert proto.kind == "FUNC_PROTO"
    expected = [_raw_spelling(raw, int(a["type_id"])) for _, a in proto.members[1:]]
    assert kernel.tracepoint_args(event) == expected
    assert tuple(expected[: len(RAW_ARGS[target])]) == RAW_ARGS[target]  # what the C reads is there


def test_tracepoint_args_of_a_missing_tracepoint(kernel: Btf) -> None:
    assert kernel.tracepoint_args("otel_netlat_no_such_event") is None


def test_c_enum_and_pt_regs_compile_with_btf_layout(
    kernel: Btf, raw: RawBtf, cc: str, tmp_path: Path
) -> None:
    regs = raw.find("STRUCT", "pt_regs")
    lines = ["#include <stddef.h>", kernel.c_enum("skb_drop_reason"), kernel.c_struct("pt_regs")]
    lines.append(f'_Static_assert(sizeof(struct pt_regs) == {raw.types[regs].attrs["size"]}, "size");')
    # Every named, non-bitfield field, including those inside anonymous unions (cs, ss on 6.x).
    checked = []

    def walk(tid: int, base: int) -> None:
        for name, a in raw.types[tid].members:
            bits = base + int(a["bits_offset"])
            inner = raw.resolve(int(a["type_id"]))
            if not name:
                walk(inner, bits)
            elif "bitfield_size" not in a:
                checked.append(name)
                lines.append(f'_Static_assert(offsetof(struct pt_regs, {name}) == {bits // 8}, "{name}");')
                size = raw.size(inner)
                lines.append(f'_Static_assert(sizeof(((struct pt_regs *)0)->{name}) == {size}, "{name}");')

    walk(regs, 0)
    assert {"di", "si", "dx", "ip", "sp"} <= set(checked)
    for name, value in kernel.enum_values("skb_drop_reason").items():
        lines.append(f'_Static_assert({name} == {value}, "{name}");')
    compile_c(cc, "\n".join(lines) + "\n", tmp_path)


@pytest.mark.parametrize("struct_name", ["sk_buff", "sock", "net_device"])
def test_c_struct_reproduces_big_kernel_structs(
    kernel: Btf, raw: RawBtf, cc: str, tmp_path: Path, struct_name: str
) -> None:
    """c_struct's layout engine against structs full of bitfields, unions and aligned members."""
    rec = raw.types[raw.find("STRUCT", struct_name)]
    lines = ["#include <stddef.h>", kernel.c_struct(struct_name)]
    lines.append(f'_Static_assert(sizeof(struct {struct_name}) == {rec.attrs["size"]}, "size");')
    for name, a in rec.members:
        if name and "bitfield_size" not in a:
            off = int(a["bits_offset"]) // 8
            lines.append(f'_Static_assert(offsetof(struct {struct_name}, {name}) == {off}, "{name}");')
    compile_c(cc, "\n".join(lines) + "\n", tmp_path)


# -- errors on the running kernel -------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo[BtfError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_struct(kernel: Btf) -> None:
    with pytest.raises(BtfError) as exc:
        kernel.offsetof("otel_no_such_struct", "x")
    assert _one_line(exc) == "kernel BTF has no struct or union 'otel_no_such_struct'"
    with pytest.raises(BtfError):
        kernel.members("otel_no_such_struct")
    with pytest.raises(BtfError):
        kernel.sizeof("otel_no_such_struct")
    with pytest.raises(BtfError):
        kernel.enum_values("otel_no_such_enum")


def test_unknown_field(kernel: Btf) -> None:
    with pytest.raises(BtfError) as exc:
        kernel.offsetof("sk_buff", "foo")
    assert _one_line(exc) == "struct sk_buff has no field 'foo'"
    with pytest.raises(BtfError) as exc:
        kernel.offsetof("sock", "__sk_common.foo")
    assert _one_line(exc) == "struct sock field '__sk_common' has no field 'foo'"
    with pytest.raises(BtfError) as exc:
        kernel.offsetof("sk_buff", "len.foo")
    assert "is not a struct or union" in _one_line(exc)
    assert not kernel.has_field("sk_buff", "foo")


def test_bitfield_has_no_byte_offset(kernel: Btf, raw: RawBtf) -> None:
    name, a = next(
        (n, a) for n, a in raw.types[raw.find("STRUCT", "sk_buff")].members if "bitfield_size" in a
    )
    with pytest.raises(BtfError, match="bitfield"):
        kernel.offsetof("sk_buff", name)
    assert kernel.bit_offsetof("sk_buff", name) == (int(a["bits_offset"]), int(a["bitfield_size"]))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BtfError) as exc:
        Btf.load(str(tmp_path / "nope"))
    assert _one_line(exc) == f"BTF file not found: {tmp_path / 'nope'}"


def test_missing_kernel_btf_explains_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "vmlinux")
    monkeypatch.setattr(btf_mod, "DEFAULT_PATH", missing)
    with pytest.raises(BtfError) as exc:
        Btf.load(missing)
    assert _one_line(exc) == (
        f"kernel BTF not found at {missing}: this kernel was built without CONFIG_DEBUG_INFO_BTF; "
        "otel-netlat needs BTF to find struct offsets"
    )


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(BtfError) as exc:
        Btf.load(str(tmp_path))  # a directory: root can read any file, so this is the unreadable case
    assert _one_line(exc).startswith(f"cannot read BTF file {tmp_path}:")


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(BtfError) as exc:
        Btf.load(str(path))
    assert _one_line(exc) == f"{path} is not a BTF file: magic 0x457f, expected 0xeb9f"


@pytest.mark.parametrize("keep", [0, 10, 24, 1000, 4_000_000])
def test_truncated_kernel_btf(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut"
    path.write_bytes(Path(VMLINUX).read_bytes()[:keep])
    with pytest.raises(BtfError, match="truncated") as exc:
        Btf.load(str(path))
    _one_line(exc)


# -- hand-built BTF ---------------------------------------------------------------------------

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)


class BtfBuilder:
    """Writes BTF blobs type by type, for cases vmlinux does not show."""

    def __init__(self) -> None:
        self.strs = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strs)
        self.strs += name.encode() + b"\0"
        return off

    def add(
        self, kind: int, name: str = "", vlen: int = 0, flag: bool = False, size: int = 0, extra=b""
    ) -> int:
        info = (int(flag) << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size) + extra
        self.count += 1
        return self.count

    def int_(self, name: str, size: int, signed: bool = False, bits: int | None = None) -> int:
        enc = (int(signed) << 24) | (bits if bits is not None else size * 8)
        return self.add(INT, name, size=size, extra=struct.pack("<I", enc))

    def composite(self, kind: int, name: str, size: int, members: list[tuple[str, int, int, int]]) -> int:
        """members: (name, type id, bit offset, bitfield size); the kind flag is set."""
        extra = b"".join(struct.pack("<III", self.s(n), t, (bf << 24) | off) for n, t, off, bf in members)
        return self.add(kind, name, vlen=len(members), flag=True, size=size, extra=extra)

    def blob(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strs))
        return hdr + bytes(self.types) + bytes(self.strs)


@pytest.fixture(scope="module")
def synthetic() -> tuple[Btf, dict[str, int]]:
    b = BtfBuilder()
    ids: dict[str, int] = {}
    u32 = ids["u32"] = b.int_("unsigned int", 4)
    u16 = ids["u16"] = b.int_("short unsigned int", 2)
    ids["ptr"] = b.add(PTR, size=u32)
    ids["array"] = b.add(ARRAY, extra=struct.pack("<III", u16, u32, 3))
    ids["inner"] = b.composite(STRUCT, "inner", 8, [("x", u32, 0, 0), ("y", u32, 32, 0)])
    ids["union"] = b.composite(UNION, "u", 4, [("a", u32, 0, 0), ("b", u16, 0, 0)])
    ids["enum"] = b.add(
        ENUM, "e", vlen=2, size=4, extra=struct.pack("<IiIi", b.s("E_A"), 1, b.s("E_MAX"), -1)
    )
    ids["sigenum"] = b.add(ENUM, "se", vlen=1, flag=True, size=4, extra=struct.pack("<Ii", b.s("SE_NEG"), -5))
    ids["fwd"] = b.add(FWD, "later")
    ids["const"] = b.add(CONST, size=ids["inner"])
    ids["typedef"] = b.add(TYPEDEF, "inner_t", size=ids["const"])
    ids["volatile"] = b.add(VOLATILE, size=u32)
    ids["restrict"] = b.add(RESTRICT, size=ids["ptr"])
    ids["proto"] = b.add(
        FUNC_PROTO, vlen=2, size=u32, extra=struct.pack("<IIII", b.s("p1"), u32, b.s("p2"), u16)
    )
    ids["func"] = b.add(FUNC, "do_thing", size=ids["proto"])
    ids["var"] = b.add(VAR, "some_var", size=u32, extra=struct.pack("<I", 1))
    ids["datasec"] = b.add(DATASEC, ".data", vlen=1, size=4, extra=struct.pack("<III", ids["var"], 0, 4))
    ids["float"] = b.add(FLOAT, "double", size=8)
    ids["decl_tag"] = b.add(DECL_TAG, "tag", size=ids["func"], extra=struct.pack("<i", -1))
    ids["type_tag"] = b.add(TYPE_TAG, "user", size=u32)
    ids["enum64"] = b.add(
        ENUM64, "e64", vlen=2, size=8,
        extra=struct.pack("<III", b.s("BIG"), 0xFFFFFFE0, 0xFFFFFFFF) + struct.pack("<III", b.s("ONE"), 1, 0),
    )  # fmt: skip
    ids["old_bits"] = b.int_("unsigned int", 4, bits=3)  # pre-kind_flag bitfield encoding
    anon_struct = b.composite(STRUCT, "", 4, [("c", u16, 0, 0), ("d", u16, 19, 3)])
    anon_union = b.composite(UNION, "", 4, [("b", u32, 0, 0), ("", anon_struct, 0, 0)])
    ids["outer"] = b.composite(
        STRUCT,
        "outer",
        40,
        [
            ("a", u32, 0, 0),
            ("", anon_union, 32, 0),
            ("e", ids["typedef"], 64, 0),
            ("tt", ids["type_tag"], 128, 0),
            ("arr", ids["array"], 160, 0),
            ("p", ids["restrict"], 256, 0),
        ],
    )
    ids["outer_t"] = b.add(TYPEDEF, "outer_t", size=ids["outer"])
    ids["old"] = b.add(
        STRUCT, "old", vlen=2, size=4,
        extra=struct.pack("<III", b.s("lo"), ids["old_bits"], 0) + struct.pack("<III", b.s("hi"), u16, 16),
    )  # fmt: skip
    ids["fn_member"] = b.composite(STRUCT, "has_fn", 4, [("f", ids["proto"], 0, 0)])
    ids["packed"] = b.composite(STRUCT, "packed", 6, [("c", u16, 0, 0), ("i", u32, 16, 0)])
    return Btf(b.blob(), "synthetic"), ids


def test_every_kind_numbers_ids(synthetic: tuple[Btf, dict[str, int]]) -> None:
    btf, ids = synthetic
    kinds = {
        "ptr": PTR, "array": ARRAY, "inner": STRUCT, "union": UNION, "enum": ENUM, "fwd": FWD,
        "const": CONST, "typedef": TYPEDEF, "volatile": VOLATILE, "restrict": RESTRICT, "proto": FUNC_PROTO,
        "func": FUNC, "var": VAR, "datasec": DATASEC, "float": FLOAT, "decl_tag": DECL_TAG,
        "type_tag": TYPE_TAG, "enum64": ENUM64, "outer": STRUCT,
    }  # fmt: skip
    assert ids["u32"] == 1
    for key, kind in kinds.items():
        assert btf.kind(ids[key]) == kind, key
    assert btf.name(ids["outer"]) == "outer"
    assert len(btf) == max(ids.values())


def test_anonymous_members_and_typedef_chains(synthetic: tuple[Btf, dict[str, int]]) -> None:
    btf, _ = synthetic
    assert [m.name for m in btf.members("outer")] == ["a", "", "e", "tt", "arr", "p"]
    assert btf.offsetof("outer", "b") == 4  # inside the anonymous union
    assert btf.offsetof("outer", "c") == 4  # inside a struct inside the anonymous union
    assert btf.bit_offsetof("outer", "d") == (32 + 19, 3)
    assert btf.offsetof("outer", "e.y") == 12  # through typedef -> const -> struct
    assert btf.offsetof("outer_t", "e") == 8
    assert btf.field_size("outer", "e") == 8
    assert btf.field_size("outer", "arr") == 6
    assert btf.field_size("outer", "p") == 8
    assert btf.sizeof("outer_t") == 40
    assert btf.sizeof("inner_t") == 8
    assert btf.sizeof("union u") == 4
    with pytest.raises(BtfError, match="bitfield"):
        btf.offsetof("outer", "d")


def test_old_style_bitfields(synthetic: tuple[Btf, dict[str, int]]) -> None:
    btf, ids = synthetic
    assert btf.members("old") == [Member("lo", 0, 3, ids["old_bits"]), Member("hi", 16, 0, ids["u16"])]


def test_enum_signedness(synthetic: tuple[Btf, dict[str, int]]) -> None:
    btf, _ = synthetic
    assert btf.enum_values("e") == {"E_A": 1, "E_MAX": 0xFFFFFFFF}
    assert btf.enum_values("se") == {"SE_NEG": -5}
    assert btf.enum_values("enum e64") == {"BIG": 0xFFFFFFFFFFFFFFE0, "ONE": 1}


def test_synthetic_c_output_compiles(synthetic: tuple[Btf, dict[str, int]], cc: str, tmp_path: Path) -> None:
    btf, _ = synthetic
    src = "\n".join(
        [
            "#include <stddef.h>",
            btf.c_enum("e"),
            btf.c_enum("se"),
            btf.c_enum("e64"),
            btf.c_struct("outer"),
            '_Static_assert(E_MAX == 0xFFFFFFFFu && SE_NEG == -5 && BIG == 0xFFFFFFFFFFFFFFE0ull, "enums");',
            '_Static_assert(sizeof(struct outer) == 40, "size");',
            '_Static_assert(offsetof(struct outer, c) == 4 && offsetof(struct outer, e.y) == 12, "offsets");',
            '_Static_assert(offsetof(struct outer, arr) == 20, "arr");',
            '_Static_assert(offsetof(struct outer, p) == 32, "p");',
        ]
    )
    compile_c(cc, src + "\n", tmp_path)


def test_c_struct_refuses_what_c_cannot_express(synthetic: tuple[Btf, dict[str, int]]) -> None:
    btf, _ = synthetic
    with pytest.raises(BtfError, match="cannot write member 'f'"):
        btf.c_struct("has_fn")
    with pytest.raises(BtfError, match="packed"):
        btf.c_struct("packed")


def test_synthetic_lookups_of_missing_names(synthetic: tuple[Btf, dict[str, int]]) -> None:
    btf, _ = synthetic
    assert btf.has_function("do_thing")
    assert not btf.has_function("outer")
    with pytest.raises(BtfError, match="no struct or union 'e'"):
        btf.members("e")  # an enum of that name is not a struct
    with pytest.raises(BtfError, match="not an enum"):
        btf.enum_values("outer_t")


def test_unknown_kind_is_an_error() -> None:
    b = BtfBuilder()
    b.int_("int", 4, signed=True)
    b.add(25, "future")
    with pytest.raises(BtfError, match="unknown kind 25"):
        Btf(b.blob(), "future")


def test_type_record_cut_short() -> None:
    b = BtfBuilder()
    u32 = b.int_("int", 4)
    b.composite(STRUCT, "s", 8, [("a", u32, 0, 0), ("b", u32, 32, 0)])
    b.types = b.types[:-12]  # drop the last member's record; the header still says vlen=2
    with pytest.raises(BtfError) as exc:
        Btf(b.blob(), "cut")
    assert "runs past" in _one_line(exc) or "truncated" in str(exc.value)
