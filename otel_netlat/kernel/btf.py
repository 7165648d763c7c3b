"""A reader of the kernel's raw BTF (``/sys/kernel/btf/vmlinux``), in pure Python.

The agent compiles its BPF C with no kernel headers (most nodes have none that match the
running kernel, and mismatched headers give wrong offsets silently). What the C needs from
the kernel — struct field offsets, ``enum skb_drop_reason``, ``struct pt_regs`` — comes from
the running kernel's BTF instead: offsets become ``-D`` constants, types are written out as C.

Start-up time matters, so :meth:`Btf.load` only walks the type section once to record where
each type starts; members, names and enum values are decoded on demand. The format is
described in the kernel's ``Documentation/bpf/btf.rst``.
"""

from __future__ import annotations

import functools
import re
import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off/len, str_off/len
_TYPE = struct.Struct("<III")  # name_off, info, size (or type id)
_U32 = struct.Struct("<I")
_MEMBER = struct.Struct("<III")  # name_off, type, offset
_ENUM = struct.Struct("<Ii")  # name_off, val (as signed; the kind flag tells which)
_ENUM64 = struct.Struct("<III")  # name_off, val_lo32, val_hi32

# BTF kinds (include/uapi/linux/btf.h).
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

KIND_NAMES = {
    INT: "int", PTR: "pointer", ARRAY: "array", STRUCT: "struct", UNION: "union", ENUM: "enum",
    FWD: "forward declaration", TYPEDEF: "typedef", VOLATILE: "volatile", CONST: "const",
    RESTRICT: "restrict", FUNC: "function", FUNC_PROTO: "function prototype", VAR: "variable",
    DATASEC: "data section", FLOAT: "float", DECL_TAG: "decl tag", TYPE_TAG: "type tag",
    ENUM64: "enum64",
}  # fmt: skip

# Length in 32-bit words of each kind's record: (fixed, per vlen entry), the fixed part
# including the 3-word common header. Kinds missing here are unknown to this reader: their
# length is unknown, so every id after them would be wrong; that is an error, not a guess.
_RECORD_WORDS = {
    INT: (4, 0), PTR: (3, 0), ARRAY: (6, 0), STRUCT: (3, 3), UNION: (3, 3), ENUM: (3, 2),
    FWD: (3, 0), TYPEDEF: (3, 0), VOLATILE: (3, 0), CONST: (3, 0), RESTRICT: (3, 0),
    FUNC: (3, 0), FUNC_PROTO: (3, 2), VAR: (4, 0), DATASEC: (3, 3), FLOAT: (3, 0),
    DECL_TAG: (4, 0), TYPE_TAG: (3, 0), ENUM64: (3, 3),
}  # fmt: skip
# The same as flat tables indexed by info's top byte (kind_flag and kind), for the index loop.
_FIXED_WORDS = [None if k & 0x60 else _RECORD_WORDS.get(k & 0x1F, (None, 0))[0] for k in range(256)]
_PER_VLEN_WORDS = [_RECORD_WORDS.get(k & 0x1F, (0, 0))[1] for k in range(256)]

_MODIFIERS = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})  # followed to the real type
# Bounds that a corrupt or hostile file cannot push the reader past (no hang, no deep
# recursion, no output out of proportion to the file): the kernel itself refuses names
# over KSYM_NAME_LEN (512) and type chains deeper than MAX_RESOLVE_DEPTH (32).
MAX_NAME_BYTES = 1024
MAX_TYPE_DEPTH = 32  # arrays, pointers, anonymous and nested members, followed one inside another
MAX_C_MEMBERS = 1 << 12  # members c_struct writes (struct net_device, nested ones inline: ~800)
_FEW_HITS = 4  # a name more often than this in the strings: one pass over all types instead
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_SIGNED = 1
_POINTER_SIZE = 8  # every target the agent runs on (x86_64, arm64) and BPF itself are 64-bit

# Signed and unsigned C integer types by size; used when writing kernel types out as C.
_C_INTS = {
    1: ("signed char", "unsigned char"),
    2: ("short", "unsigned short"),
    4: ("int", "unsigned int"),
    8: ("long long", "unsigned long long"),
    16: ("__int128", "unsigned __int128"),
}
_C_FLOATS = {4: "float", 8: "double"}


class BtfError(Exception):
    """A BTF file that cannot be read, or a type or field the running kernel does not have.

    Its text is one line (a name read from a corrupt file may hold a line break): the CLI
    prints it as the agent's last words.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True, slots=True)
class Member:
    """One direct member of a struct or union, as BTF lists it.

    ``bit_offset`` counts from the start of the enclosing struct; ``bitfield_size`` is 0 for
    a member that is not a bitfield; ``name`` is ``""`` for an anonymous struct or union.
    """

    name: str
    bit_offset: int
    bitfield_size: int
    type_id: int


class Btf:
    """Types of one BTF blob (the kernel's, normally), looked up by name.

    Type ids start at 1 (0 is ``void``). Names may be given bare (``"sk_buff"``) or with
    their C tag (``"struct sk_buff"``, ``"union bpf_attr"``, ``"enum skb_drop_reason"``).
    Where BTF holds several definitions under one name (a few static structs in vmlinux),
    the first complete one wins.
    """

    def __init__(self, data: bytes, path: str = "<bytes>") -> None:
        """Index ``data`` (a whole BTF file); ``path`` only appears in error messages."""
        self.path = path
        self._data = data
        try:
            magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
                data, 0
            )
        except struct.error:
            raise BtfError(
                f"BTF file {path} is truncated: {len(data)} bytes, shorter than the BTF header"
            ) from None
        if magic == _MAGIC and sys.byteorder != "little":
            raise BtfError("otel-netlat reads BTF on little-endian hosts only")
        if magic != _MAGIC:
            hint = " (big-endian BTF is not supported)" if magic == 0x9FEB else ""
            raise BtfError(f"{path} is not a BTF file: magic {magic:#06x}, expected {_MAGIC:#06x}{hint}")
        if hdr_len < _HEADER.size:
            raise BtfError(f"BTF file {path} is corrupt: header length {hdr_len} < {_HEADER.size}")
        types_start, types_end = hdr_len + type_off, hdr_len + type_off + type_len
        strs_start, strs_end = hdr_len + str_off, hdr_len + str_off + str_len
        if max(types_end, strs_end) > len(data):
            raise BtfError(
                f"BTF file {path} is truncated: its header announces {max(types_end, strs_end)} bytes, "
                f"the file has {len(data)}"
            )
        self._strs = data[strs_start:strs_end]
        if not self._strs or self._strs[0] or self._strs[-1]:  # as the kernel's btf_parse_str_sec
            raise BtfError(
                f"BTF file {path} is corrupt: its string section does not start and end with a NUL byte"
            )
        self._types_start = types_start
        self._offsets, name_offs = self._index(data, types_start, types_end)
        # Name offsets as raw little-endian u32s, searched with bytes.find (see _ids_named).
        self._name_offs = name_offs.tobytes()
        self._ids_cache: dict[str, list[int]] = {}
        self._members: dict[int, list[Member]] = {}

    @classmethod
    def load(cls, path: str = DEFAULT_PATH) -> Btf:
        """Read and index a BTF file: the running kernel's by default."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            if path == DEFAULT_PATH:
                raise BtfError(
                    f"kernel BTF not found at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF; "
                    "otel-netlat needs BTF to find struct offsets"
                ) from None
            raise BtfError(f"BTF file not found: {path}") from None
        except PermissionError:
            raise BtfError(
                f"cannot read BTF file {path}: permission denied (run the agent as root)"
            ) from None
        except OSError as exc:
            raise BtfError(f"cannot read BTF file {path}: {exc.strerror or exc}") from None
        return cls(data, path)

    # -- indexing ---------------------------------------------------------------------------

    def _index(self, data: bytes, start: int, end: int) -> tuple[array, array]:
        """Record where every type starts (and its name offset) in one pass.

        This is the only work proportional to the number of types (~130k in vmlinux), so it
        reads one word per type (``info``: kind and vlen give the record's length) through a
        u32 memoryview, about twice as fast as struct.unpack_from. Offsets are in words from
        the start of the type section.
        """
        if (end - start) % 4:
            raise BtfError(
                f"BTF file {self.path} is corrupt: type section length {end - start} is not a multiple of 4"
            )
        words = memoryview(data)[start:end].cast("I")  # native order: checked little-endian in __init__
        starts = array("I", [0])  # word index of each type; id 0 is void (4 bytes a type)
        add, fixed, per_vlen = starts.append, _FIXED_WORDS, _PER_VLEN_WORDS
        nwords = len(words)
        w = 0
        try:
            while w < nwords:
                info = words[w + 1]
                add(w)
                kind = info >> 24  # tables are indexed by kind and kind_flag together
                w += fixed[kind] + per_vlen[kind] * (info & 0xFFFF)  # None (unknown kind): TypeError
        except IndexError:
            raise BtfError(f"BTF file {self.path} is truncated inside type id {len(starts)}") from None
        except TypeError:
            raise BtfError(
                f"BTF file {self.path}: type id {len(starts) - 1} has unknown kind {kind & 0x1F}; "
                "this BTF is newer than otel-netlat's reader"
            ) from None
        if w != nwords:
            raise BtfError(f"BTF file {self.path} is corrupt: the last type runs past the type section")
        name_offs = array("I", map(words.__getitem__, starts)) if nwords else array("I", [0])
        name_offs[0] = 0  # void has no name
        return starts, name_offs

    def __len__(self) -> int:
        """Number of types, not counting void."""
        return len(self._offsets) - 1

    def _str(self, off: int) -> str:
        """The name at string offset ``off``: in the section, and no longer than a name can be."""
        end = self._strs.find(b"\0", off, off + MAX_NAME_BYTES + 1)
        if end < 0:
            where = "outside the string section" if off >= len(self._strs) else "not a name"
            raise BtfError(
                f"BTF file {self.path} is corrupt: string offset {off} is {where} "
                f"(a NUL-terminated string of at most {MAX_NAME_BYTES} bytes)"
            )
        return self._strs[off:end].decode("utf-8", "replace")

    def _header(self, tid: int) -> tuple[int, int, int, int, bool, int]:
        """(kind, name_off, vlen, size_or_type, kind_flag, pos) of type ``tid``."""
        if not 0 < tid < len(self._offsets):
            raise BtfError(f"BTF file {self.path} refers to type id {tid}, which does not exist")
        pos = self._types_start + 4 * self._offsets[tid]
        name_off, info, size = _TYPE.unpack_from(self._data, pos)
        return (info >> 24) & 0x1F, name_off, info & 0xFFFF, size, bool(info >> 31), pos

    def kind(self, tid: int) -> int:
        """BTF kind of type ``tid`` (0 for void)."""
        return self._header(tid)[0] if tid else 0

    def name(self, tid: int) -> str:
        """Name of type ``tid`` (``""`` for anonymous types and void)."""
        return self._str(self._header(tid)[1]) if tid else ""

    def _ids_named(self, name: str) -> list[int]:
        """Ids of all types called ``name``, in id order (cached per name).

        No name index is built: two C-speed scans (~1 ms each) find the name in the string
        section, then its offset in the table of name offsets. The agent looks up about ten
        names, far cheaper than indexing ~130k names it never asks for.
        """
        cached = self._ids_cache.get(name)
        if cached is not None:
            return cached
        key = b"\0" + name.encode() + b"\0"  # a whole string (offset 0 holds the empty one)
        strs, table = self._strs, self._name_offs
        offsets: list[int] = []
        i = strs.find(key) if name else -1
        while i >= 0 and len(offsets) <= _FEW_HITS:  # more than one: strings not deduplicated
            offsets.append(i + 1)
            i = strs.find(key, i + 1)
        if len(offsets) > _FEW_HITS:  # a table scan per copy would be quadratic: one pass instead
            ids = [
                tid for tid, off in enumerate(memoryview(table).cast("I")) if strs.startswith(key[1:], off)
            ]
        else:
            ids = []
            for off in offsets:
                needle = _U32.pack(off)
                j = table.find(needle)
                while j >= 0:
                    if j % 4 == 0:  # a whole table entry, not bytes straddling two
                        ids.append(j // 4)
                    j = table.find(needle, j + 1)
            ids.sort()
        self._ids_cache[name] = ids
        return ids

    def _find(self, name: str, kinds: tuple[int, ...], what: str) -> int:
        """Id of the type called ``name`` of one of ``kinds`` (preferred in that order)."""
        tag, bare = _split_tag(name)
        if tag is not None:
            kinds = tag
        ids = self._ids_named(bare)
        for kind in kinds:
            matches = [tid for tid in ids if self._header(tid)[0] == kind]
            if matches:
                # Duplicate names: prefer a complete definition over an empty one.
                return next((t for t in matches if self._header(t)[2]), matches[0])
        raise BtfError(f"kernel BTF has no {what} '{bare}'")

    def _resolve(self, tid: int) -> int:
        """Follow typedefs and qualifiers to the type that has a layout."""
        for _ in range(64):  # a cycle would be a corrupt file, not a deep chain
            if tid == 0:
                return 0
            kind, _, _, ref, _, _ = self._header(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = ref
        raise BtfError(f"BTF file {self.path}: typedef/qualifier chain too long at type id {tid}")

    def _struct_id(self, name: str) -> int:
        tid = self._find(name, (STRUCT, UNION, TYPEDEF), "struct or union")
        resolved = self._resolve(tid)
        if self.kind(resolved) not in (STRUCT, UNION):
            raise BtfError(f"kernel BTF type '{name}' is not a struct or union")
        return resolved

    def _describe(self, tid: int) -> str:
        kind = self.kind(tid)
        name = self.name(tid)
        if kind in (STRUCT, UNION, ENUM, ENUM64):
            return f"{'enum' if kind == ENUM64 else KIND_NAMES[kind]} {name or '(anonymous)'}"
        return name or KIND_NAMES.get(kind, "void")

    # -- sizes ------------------------------------------------------------------------------

    def type_size(self, tid: int) -> int:
        """Size in bytes of type ``tid``, through typedefs, qualifiers and arrays."""
        count = 1  # elements of the arrays walked so far
        for _ in range(MAX_TYPE_DEPTH):
            tid = self._resolve(tid)
            if tid == 0:
                raise BtfError("void has no size")
            kind, _, _, size, _, pos = self._header(tid)
            if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
                return count * size
            if kind == PTR:
                return count * _POINTER_SIZE
            if kind != ARRAY:
                raise BtfError(f"kernel BTF type {self._describe(tid)} ({KIND_NAMES.get(kind)}) has no size")
            tid, _index_type, nelems = struct.unpack_from("<III", self._data, pos + 12)
            count *= nelems
        raise self._too_deep("arrays", tid)

    def _too_deep(self, what: str, tid: int) -> BtfError:
        """The error for a chain of ``what`` longer than any kernel has: a corrupt file or a loop."""
        return BtfError(
            f"BTF file {self.path} is corrupt: {what} nested more than {MAX_TYPE_DEPTH} deep at type id {tid}"
        )

    def sizeof(self, name: str) -> int:
        """``sizeof`` a named struct, union, typedef, integer, enum or float type."""
        tid = self._find(name, (STRUCT, UNION, TYPEDEF, INT, ENUM, ENUM64, FLOAT), "type")
        return self.type_size(tid)

    # -- members ----------------------------------------------------------------------------

    def members_of(self, tid: int) -> list[Member]:
        """Direct members of struct or union ``tid`` (decoded once, then cached)."""
        cached = self._members.get(tid)
        if cached is not None:
            return cached
        kind, _, vlen, _, kind_flag, pos = self._header(tid)
        if kind not in (STRUCT, UNION):
            raise BtfError(f"kernel BTF type {self._describe(tid)} is not a struct or union")
        members = []
        for i in range(vlen):
            name_off, mtype, offset = _MEMBER.unpack_from(self._data, pos + 12 + 12 * i)
            if kind_flag:
                bit_offset, bitfield_size = offset & 0xFFFFFF, offset >> 24
            else:
                bit_offset, bitfield_size = offset, 0
                # Old encoding (no kind flag): a bitfield's INT type carries offset and width.
                mkind, _, _, msize, _, mpos = self._header(mtype) if mtype else (0, 0, 0, 0, False, 0)
                if mkind == INT:
                    enc = _U32.unpack_from(self._data, mpos + 12)[0]
                    nr_bits, int_off = enc & 0xFF, (enc >> 16) & 0xFF
                    if nr_bits != msize * 8 or int_off:
                        bit_offset, bitfield_size = offset + int_off, nr_bits
            members.append(Member(self._str(name_off), bit_offset, bitfield_size, mtype))
        self._members[tid] = members
        return members

    def members(self, struct: str) -> list[Member]:
        """Direct members of ``struct <name>`` (or union), anonymous ones included."""
        return self.members_of(self._struct_id(struct))

    def _lookup(
        self, tid: int, field: str, searched: set[int] | None = None, depth: int = 0
    ) -> tuple[int, Member] | None:
        """Find ``field`` in composite ``tid``, descending into anonymous members.

        Returns the bit offset of the member from the start of ``tid`` and the member.
        ``searched``: composites already searched in vain (a corrupt file may nest one in
        itself, or share one between many anonymous members: each is searched once).
        """
        if depth > MAX_TYPE_DEPTH:
            raise self._too_deep("anonymous members", tid)
        searched = set() if searched is None else searched
        searched.add(tid)
        members = self.members_of(tid)
        for member in members:
            if member.name == field:
                return member.bit_offset, member
        for member in members:
            if not member.name:
                inner = self._resolve(member.type_id)
                if inner not in searched and self.kind(inner) in (STRUCT, UNION):
                    found = self._lookup(inner, field, searched, depth + 1)
                    if found:
                        return member.bit_offset + found[0], found[1]
        return None

    def _walk(self, struct: str, path: str) -> tuple[int, Member]:
        """Bit offset of the field at dotted ``path`` inside ``struct``, and its member."""
        parts = path.split(".")  # never empty, so the loop always binds member
        tid = self._struct_id(struct)
        bits = 0
        for depth, part in enumerate(parts):
            found = self._lookup(tid, part) if part else None
            if found is None:
                where = f" field '{'.'.join(parts[:depth])}'" if depth else ""
                raise BtfError(f"struct {struct}{where} has no field '{part}'")
            bits += found[0]
            member = found[1]
            if depth + 1 < len(parts):
                tid = self._resolve(member.type_id)
                if self.kind(tid) not in (STRUCT, UNION):
                    raise BtfError(
                        f"struct {struct} field '{'.'.join(parts[: depth + 1])}' is not a struct or union, "
                        f"so it has no field '{parts[depth + 1]}'"
                    )
        return bits, member

    def bit_offsetof(self, struct: str, path: str) -> tuple[int, int]:
        """(bit offset, bitfield size or 0) of a field: works for bitfields too."""
        bits, member = self._walk(struct, path)
        return bits, member.bitfield_size

    def offsetof(self, struct: str, path: str) -> int:
        """Byte offset of a field, as C's ``offsetof`` (dotted paths go through nested members).

        Anonymous structs and unions are searched automatically, as C does, so the same path
        works whether or not a kernel wraps the field in an anonymous member.
        """
        bits, member = self._walk(struct, path)
        if member.bitfield_size or bits % 8:
            raise BtfError(
                f"struct {struct} field '{path}' is a bitfield (bit {bits}, {member.bitfield_size} bits): "
                "it has no byte offset; use bit_offsetof"
            )
        return bits // 8

    def has_field(self, struct: str, path: str) -> bool:
        """Whether ``struct`` has the field at ``path`` (for fields that come and go by version)."""
        try:
            self._walk(struct, path)
        except BtfError:
            return False
        return True

    def field_size(self, struct: str, path: str) -> int:
        """Size in bytes of a field's type (for a bitfield: of its underlying type)."""
        _bits, member = self._walk(struct, path)
        return self.type_size(member.type_id)

    def field_type(self, struct: str, path: str) -> int:
        """Type id of a field, typedefs and qualifiers followed."""
        return self._resolve(self._walk(struct, path)[1].type_id)

    # -- enums ------------------------------------------------------------------------------

    def _enum_id(self, name: str) -> int:
        tid = self._find(name, (ENUM, ENUM64, TYPEDEF), "enum")
        resolved = self._resolve(tid)
        if self.kind(resolved) not in (ENUM, ENUM64):
            raise BtfError(f"kernel BTF type '{name}' is not an enum")
        return resolved

    def enum_values_of(self, tid: int) -> dict[str, int]:
        """Enumerators of enum ``tid`` with their values, in declaration order."""
        kind, _, vlen, _, signed, pos = self._header(tid)
        values: dict[str, int] = {}
        data = self._data
        if kind == ENUM:
            for i in range(vlen):
                name_off, val = _ENUM.unpack_from(data, pos + 12 + 8 * i)
                values[self._str(name_off)] = val if signed or val >= 0 else val + (1 << 32)
        elif kind == ENUM64:
            for i in range(vlen):
                name_off, lo, hi = _ENUM64.unpack_from(data, pos + 12 + 12 * i)
                val = (hi << 32) | lo
                values[self._str(name_off)] = val - (1 << 64) if signed and val >> 63 else val
        else:
            raise BtfError(f"kernel BTF type {self._describe(tid)} is not an enum")
        return values

    def enum_values(self, name: str) -> dict[str, int]:
        """Enumerators of ``enum <name>``, e.g. every ``skb_drop_reason``."""
        return self.enum_values_of(self._enum_id(name))

    def c_enum(self, name: str) -> str:
        """``enum <name> { ... };`` as C, with the running kernel's values."""
        tid = self._enum_id(name)
        size = self._header(tid)[3]
        label = f"enum {name}"
        lines = [f"enum {_c_name(self.name(tid), label, allow_empty=True)} {{"]
        for enumerator, value in self.enum_values_of(tid).items():
            lines.append(f"\t{_c_name(enumerator, label)} = {_c_literal(value, size)},")
        lines.append("};")
        return "\n".join(lines) + "\n"

    # -- functions --------------------------------------------------------------------------

    def has_function(self, name: str) -> bool:
        """Whether BTF describes a kernel function ``name`` (an fentry/kprobe target candidate)."""
        return any(self._header(tid)[0] == FUNC for tid in self._ids_named(name))

    def type_spelling(self, tid: int) -> str:
        """A short C spelling of a type, qualifiers dropped: ``struct sock *``, ``int``,
        ``enum skb_drop_reason``, ``void *``. Enough to check an argument against a table."""
        pointers = 0
        for _ in range(MAX_TYPE_DEPTH):
            tid = self._resolve(tid)
            if tid == 0 or self.kind(tid) != PTR:
                break
            pointers += 1
            tid = self._header(tid)[3]
        else:
            raise self._too_deep("pointers", tid)
        base = self._base_spelling(tid)
        return base.rstrip() + " *" * pointers if pointers else base

    def _base_spelling(self, tid: int) -> str:
        """:meth:`type_spelling` of a type that is not a pointer."""
        if tid == 0:
            return "void"
        kind = self.kind(tid)
        if kind in (STRUCT, UNION, FWD):
            tag = "union" if kind == UNION else "struct"
            return f"{tag} {self.name(tid)}"
        if kind in (ENUM, ENUM64):
            return f"enum {self.name(tid)}"
        return self.name(tid) or KIND_NAMES.get(kind, "?")

    def tracepoint_args(self, event: str) -> list[str] | None:
        """The argument types a raw tracepoint program of ``event`` gets, in order, or None.

        The kernel declares every tracepoint's prototype in BTF as ``typedef void
        (*btf_trace_<event>)(void *__data, <TP_PROTO args>)``; a raw tracepoint program sees
        the TP_PROTO arguments as ``ctx->args[0..]``. Their order changes between kernels
        (kfree_skb gained ``reason``, consume_skb ``location``), so the agent reads it here
        instead of assuming it. None: this kernel has no such tracepoint.
        """
        ids = [t for t in self._ids_named(f"btf_trace_{event}") if self.kind(t) == TYPEDEF]
        if not ids:
            return None
        ptr = self._header(ids[0])[3]
        if self.kind(ptr) != PTR:
            return None
        params = self._params(self._header(ptr)[3])
        return None if params is None else params[1:]  # params[0] is void *__data

    def function_args(self, name: str) -> list[str] | None:
        """The argument types of kernel function ``name`` (an fexit program sees them, then
        the return value, in ``ctx[]``), or None when BTF does not describe it."""
        ids = [t for t in self._ids_named(name) if self.kind(t) == FUNC]
        return self._params(self._header(ids[0])[3]) if ids else None

    def _params(self, proto: int) -> list[str] | None:
        kind, _, vlen, _, _, pos = self._header(proto) if proto else (0, 0, 0, 0, False, 0)
        if kind != FUNC_PROTO:
            return None
        params = [_U32.unpack_from(self._data, pos + 12 + 8 * i + 4)[0] for i in range(vlen)]
        return [self.type_spelling(t) for t in params]

    # -- C output ---------------------------------------------------------------------------

    def c_struct(self, name: str) -> str:
        """``struct <name> { ... };`` (or a union) as C whose layout matches BTF exactly.

        Members become integer types of their size (enums included), ``void *`` for every
        pointer, floats, arrays of those, and nested structs/unions written inline (anonymous
        ones stay anonymous), so the output needs no other declaration. Padding that the
        kernel gets from alignment attributes is spelled out. Raises BtfError for a layout C
        cannot reproduce without attributes (packed structs) or a member with no C spelling.
        """
        tid = self._struct_id(name)
        kind = self.kind(tid)
        body, _size, _align = _CWriter(self).composite(tid, depth=1)
        return f"{KIND_NAMES[kind]} {_c_name(self.name(tid), name, allow_empty=True)} {body};\n"


def kernel_btf(path: str = DEFAULT_PATH) -> Btf:
    """The running kernel's BTF, read once: start-up asks it for offsets, enums, function
    hooks and tracepoint prototypes. The loader drops it (``kernel_btf.cache_clear()``)
    before compiling, so its ~7 MB are not held through BCC's compile nor after."""
    return _kernel_btf(path)


@functools.lru_cache(maxsize=1)
def _kernel_btf(path: str) -> Btf:  # one positional key, however the caller spelled the path
    return Btf.load(path)


kernel_btf.cache_clear = _kernel_btf.cache_clear  # type: ignore[attr-defined]


def _split_tag(name: str) -> tuple[tuple[int, ...] | None, str]:
    """Split an optional C tag off a type name: ``"struct sk_buff"`` -> ((STRUCT,), "sk_buff")."""
    for tag, kinds in (("struct ", (STRUCT,)), ("union ", (UNION,)), ("enum ", (ENUM, ENUM64))):
        if name.startswith(tag):
            return kinds, name[len(tag) :].strip()
    return None, name.strip()


def _c_name(name: str, where: str, allow_empty: bool = False) -> str:
    """``name`` if it can go into C source as is: the kernel's names are C identifiers."""
    if not (_IDENTIFIER.fullmatch(name) or (allow_empty and not name)):
        raise BtfError(f"{where}: name {name!r} is not a C identifier")
    return name


def _c_literal(value: int, size: int) -> str:
    """An enumerator value as a C literal of the enum's width (suffixes keep big values exact)."""
    if value < -(1 << 31):
        return f"(-{-value - 1}LL - 1)"  # spelled so that even LLONG_MIN is no overflowing literal
    if value > 0x7FFFFFFF:
        return f"{value}ULL" if size == 8 or value > 0xFFFFFFFF else f"{value}U"
    return str(value)


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


class _CWriter:
    """Writes BTF composite types as C with an explicitly checked layout.

    It lays out each member as a C compiler would (System V rules: natural alignment,
    bitfields packed into units of their type unless they would straddle one) and inserts
    explicit padding wherever BTF puts a member later than that, so the C compiler lands
    every member at the BTF offset. A member BTF places *earlier* than C would means a
    packed struct: an error, since the output carries no attributes.
    """

    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        self.pads = 0
        self.members = 0  # written so far, against MAX_C_MEMBERS
        self.nesting = 0  # declarations being written one inside another, against MAX_TYPE_DEPTH

    def _pad_name(self) -> str:
        # One counter per output: anonymous members share their parent's member namespace.
        self.pads += 1
        return f"__otel_pad{self.pads}"

    def _padding(self, start_bits: int, end_bits: int, indent: str) -> list[str]:
        """Members covering bits [start, end): unnamed char bitfields up to a byte, then a char array."""
        lines = []
        cur = start_bits
        while cur < end_bits:
            if cur % 8 or end_bits - cur < 8:
                width = min(8 - cur % 8, end_bits - cur)
                lines.append(f"{indent}unsigned char : {width};")
                cur += width
            else:
                nbytes = (end_bits - cur) // 8
                lines.append(f"{indent}unsigned char {self._pad_name()}[{nbytes}];")
                cur += nbytes * 8
        return lines

    def declare(self, tid: int, declarator: str, depth: int) -> tuple[str, int, int]:
        """C declaration of ``declarator`` with type ``tid``: (text, size, alignment)."""
        self.nesting += 1
        try:
            if self.nesting > MAX_TYPE_DEPTH:
                raise self.btf._too_deep("arrays and members", tid)
            return self._declare(tid, declarator, depth)
        finally:
            self.nesting -= 1

    def _declare(self, tid: int, declarator: str, depth: int) -> tuple[str, int, int]:
        """:meth:`declare`, one level."""
        btf = self.btf
        tid = btf._resolve(tid)
        kind, _, _, size, kind_flag, pos = btf._header(tid) if tid else (0, 0, 0, 0, False, 0)
        sep = " " if declarator else ""
        if kind == INT:
            enc = _U32.unpack_from(btf._data, pos + 12)[0]
            if size not in _C_INTS:
                raise BtfError(f"cannot write a {size}-byte integer '{btf.name(tid)}' as C")
            return f"{_C_INTS[size][0 if (enc >> 24) & _INT_SIGNED else 1]}{sep}{declarator}", size, size
        if kind in (ENUM, ENUM64):
            if size not in _C_INTS:
                raise BtfError(f"cannot write a {size}-byte {btf._describe(tid)} as C")
            return f"{_C_INTS[size][0 if kind_flag else 1]}{sep}{declarator}", size, size
        if kind == FLOAT:
            if size not in _C_FLOATS:
                raise BtfError(f"cannot write a {size}-byte float as C")
            return f"{_C_FLOATS[size]}{sep}{declarator}", size, size
        if kind == PTR:
            return f"void *{declarator}", _POINTER_SIZE, _POINTER_SIZE
        if kind == ARRAY:
            elem, _index_type, nelems = struct.unpack_from("<III", btf._data, pos + 12)
            text, elem_size, align = self.declare(elem, f"{declarator}[{nelems}]", depth)
            return text, elem_size * nelems, align
        if kind in (STRUCT, UNION):
            body, csize, align = self.composite(tid, depth + 1)
            return f"{KIND_NAMES[kind]} {body}{sep}{declarator}", csize, align
        what = btf._describe(tid) if tid else "void"
        raise BtfError(f"cannot write member '{declarator or '(anonymous)'}' of type {what} as C")

    def composite(self, tid: int, depth: int) -> tuple[str, int, int]:
        """``{ members }`` of struct/union ``tid`` with checked layout: (text, size, alignment)."""
        btf = self.btf
        kind, _, _, size, _, _ = btf._header(tid)
        is_union = kind == UNION
        indent = "\t" * depth
        lines: list[str] = []
        cur = 0  # bits laid out so far (struct), or the largest member (union)
        max_align = 1
        label = btf._describe(tid)
        for member in btf.members_of(tid):
            mname = _c_name(member.name, label, allow_empty=True) or "(anonymous)"
            self.members += 1
            if self.members > MAX_C_MEMBERS:
                raise BtfError(f"{label}: more than {MAX_C_MEMBERS} members to write out as C")
            text, msize, malign = self.declare(member.type_id, member.name, depth)
            width = member.bitfield_size
            if width:
                if btf.kind(btf._resolve(member.type_id)) not in (INT, ENUM, ENUM64):
                    raise BtfError(f"{label}: bitfield '{mname}' has a type C cannot make a bitfield of")
                text = f"{text} : {width}"
            target = member.bit_offset
            start = 0 if is_union else cur
            unit = malign * 8
            if width:
                fits = start // unit == (start + width - 1) // unit
                natural = start if fits else _align_up(start, unit)
            else:
                natural = _align_up(start, unit)
            if natural != target:
                if target < start or is_union:
                    raise BtfError(
                        f"{label}: member '{mname}' at bit {target} overlaps or is packed: "
                        "C cannot lay it out without attributes"
                    )
                lines += self._padding(start, target, indent)
                ok = target // unit == (target + width - 1) // unit if width else target % unit == 0
                if not ok:
                    raise BtfError(
                        f"{label}: member '{mname}' at bit {target} is misaligned for its type (packed?)"
                    )
            lines.append(f"{indent}{text};")
            end = target + (width or msize * 8)
            cur = max(cur, end) if is_union else end
            max_align = max(max_align, malign)
        natural_size = _align_up(_align_up(cur, 8) // 8, max_align)
        if natural_size > size or size % max_align:
            raise BtfError(
                f"{label}: size {size} cannot be reproduced in C (natural size {natural_size}, "
                f"alignment {max_align}; packed struct?)"
            )
        if natural_size < size:
            if is_union:
                lines.append(f"{indent}unsigned char {self._pad_name()}[{size}];")
            else:
                lines += self._padding(cur, size * 8, indent)
        closing = "\t" * (depth - 1)
        return "{\n" + "\n".join(lines) + ("\n" if lines else "") + closing + "}", size, max_align
