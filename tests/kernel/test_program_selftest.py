"""Logic as compiled into the BPF program, run on demand through a syscall tracepoint.

The agent's own program is built with NETLAT_SELFTEST: writing an input into a map and
calling getpgid(magic) runs the compiled bucket slotting and header parser on it, so these
tests check the kernel's code, not a Python copy of it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct

import pytest

from otel_netlat.program.build import SELFTEST_PID, slot_expression
from otel_netlat.program.layout import NetType, Transport
from tests.support.kernel import DEFAULT_BOUNDS_NS

libc = ctypes.CDLL(None, use_errno=True)


class SelfTest:
    def __init__(self, loaded) -> None:
        self.bpf = loaded.program.bpf
        self.inp = self.bpf[b"selftest_input"]
        self.out = self.bpf[b"selftest_output"]

    def run(self, value_ns: int = 0, proto_be: int = 0, data: bytes = b""):
        key = self.inp.Key(0)
        leaf = self.inp.Leaf()
        leaf.value_ns = value_ns
        leaf.proto_be = proto_be
        leaf.len = len(data)
        ctypes.memmove(ctypes.addressof(leaf.bytes), data, len(data))
        self.inp[key] = leaf
        self.out[self.out.Key(0)] = self.out.Leaf()
        libc.getpgid(SELFTEST_PID)
        res = self.out[self.out.Key(0)]
        assert res.done == 1, "self-test probe did not run"
        return res


@pytest.fixture
def selftest(load_agent_program):
    return SelfTest(load_agent_program(selftest=True))


def expected_bucket(bounds: tuple[int, ...], v: int) -> int:
    """OpenTelemetry's rule: bucket i holds (b[i-1], b[i]]."""
    for i, b in enumerate(bounds):
        if v <= b:
            return i
    return len(bounds)


def test_bucket_slotting_at_every_bound(selftest):
    values = [0, 1]
    for b in DEFAULT_BOUNDS_NS:
        values += [b - 1, b, b + 1]
    values += [2**40, 2**63]
    for v in values:
        assert selftest.run(value_ns=v).bucket == expected_bucket(DEFAULT_BOUNDS_NS, v), v


def test_custom_bounds_slotting(load_agent_program):
    bounds = (5, 100, 101, 250_000, 1_000_000_000)
    st = SelfTest(load_agent_program(selftest=True, bounds_ns=bounds))
    for b in bounds:
        for v in (b - 1, b, b + 1):
            assert st.run(value_ns=v).bucket == expected_bucket(bounds, v), v


def test_slot_expression_depth_is_logarithmic():
    expr = slot_expression(DEFAULT_BOUNDS_NS)
    assert expr.count("?") == len(DEFAULT_BOUNDS_NS)  # each bound compared once in the tree
    depth = max_depth = 0
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        max_depth = max(max_depth, depth)
    assert max_depth <= 2 * 6  # ≤ ceil(log2(22)) comparisons on any path (2 parens per level)


def ipv4(proto: int, frag_off: int = 0, src="10.1.2.3", dst="10.9.8.7") -> bytes:
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20,
        1,
        frag_off,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )


def ipv6(next_header: int, ext: bytes = b"") -> bytes:
    return (
        struct.pack(
            "!IHBB16s16s",
            0x60000000,
            len(ext),
            next_header,
            64,
            ipaddress.IPv6Address("fd00::1").packed,
            ipaddress.IPv6Address("fd00::2").packed,
        )
        + ext
    )


IP_BE = 0x0008
IPV6_BE = 0xDD86


@pytest.mark.parametrize(
    "proto_be,data,net_type,transport",
    [
        (IP_BE, ipv4(6), NetType.IPV4, Transport.TCP),
        (IP_BE, ipv4(17), NetType.IPV4, Transport.UDP),
        (IP_BE, ipv4(1), NetType.IPV4, Transport.ICMP),
        (IP_BE, ipv4(47), NetType.IPV4, Transport.OTHER),
        (IP_BE, ipv4(58), NetType.IPV4, Transport.OTHER),  # ipv6-icmp number inside IPv4 is not ICMP
        (IP_BE, ipv4(17, frag_off=0x2000), NetType.IPV4, Transport.UDP),  # first fragment (MF set)
        (IP_BE, ipv4(17, frag_off=0x0010), NetType.IPV4, Transport.OTHER),  # non-first fragment
        (IPV6_BE, ipv6(17), NetType.IPV6, Transport.UDP),
        (IPV6_BE, ipv6(6), NetType.IPV6, Transport.TCP),
        (IPV6_BE, ipv6(58), NetType.IPV6, Transport.ICMP),
        (IPV6_BE, ipv6(1), NetType.IPV6, Transport.OTHER),
        # hop-by-hop (8 bytes) then UDP
        (IPV6_BE, ipv6(0, bytes([17, 0]) + b"\0" * 6), NetType.IPV6, Transport.UDP),
        # hop-by-hop, destination options (16 bytes), then TCP
        (
            IPV6_BE,
            ipv6(0, bytes([60, 0]) + b"\0" * 6 + bytes([6, 1]) + b"\0" * 14),
            NetType.IPV6,
            Transport.TCP,
        ),
        # first fragment (offset 0) of UDP
        (IPV6_BE, ipv6(44, bytes([17, 0, 0, 1, 0, 0, 0, 1])), NetType.IPV6, Transport.UDP),
        # non-first fragment: no transport header
        (IPV6_BE, ipv6(44, bytes([17, 0, 0x05, 0x01, 0, 0, 0, 1])), NetType.IPV6, Transport.OTHER),
    ],
)
def test_header_parsing_in_kernel(selftest, proto_be, data, net_type, transport):
    res = selftest.run(proto_be=proto_be, data=data)
    assert (res.net_type, res.transport) == (net_type, transport)


def test_non_ip_is_not_classified(selftest):
    res = selftest.run(proto_be=0x0608, data=b"\0" * 28)  # ARP
    assert (res.net_type, res.transport) == (255, 255)


def test_address_prefixes_in_kernel(load_agent_program):
    st = SelfTest(load_agent_program(selftest=True, addr_labels=True, ipv4_prefix=24, ipv6_prefix=64))
    res = st.run(proto_be=IP_BE, data=ipv4(17, src="10.1.2.3", dst="192.168.77.200"))
    assert bytes(res.saddr[:4]) == ipaddress.IPv4Address("10.1.2.0").packed
    assert bytes(res.daddr[:4]) == ipaddress.IPv4Address("192.168.77.0").packed
    res = st.run(proto_be=IPV6_BE, data=ipv6(17))
    assert bytes(res.saddr) == ipaddress.IPv6Address("fd00::").packed
