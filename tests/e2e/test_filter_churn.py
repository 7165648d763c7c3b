"""--netns / --interface under churn: a filtered namespace or interface that is deleted and
created again is measured again, with a warning when it goes and a line when it is back.

The agent runs as a process with both filters; the test deletes and recreates the veth
(a new ifindex) and the namespaces (a new inode), then churns them twenty times, and counts
the UDP datagrams the backlog stage saw after each step exactly.
"""

from __future__ import annotations

from tests.support.agent import AgentProcess, total
from tests.support.netns import VethPair, link_veth, make_veth_pair, remove_veth_pair, udp_lockstep

N = 200
CHURN = 20


def _backlog(agent: AgentProcess) -> float:
    return total(agent.metrics(), "netlat_packets_total", netlat_stage="backlog", network_transport="udp")


def _wait_lines(agent: AgentProcess, text: str, n: int) -> None:
    """Wait for the ``n``-th log line containing ``text`` (the agent's own signal)."""
    agent.wait_until(lambda: agent.output(None).count(text) >= n or None, 30, f"{n} log lines with {text!r}")


def _wait_measured(agent: AgentProcess, pair: VethPair) -> float:
    """Send one datagram at a time until the backlog stage counts one (the filter sets are
    current), and return the count then."""
    before = _backlog(agent)

    def counted() -> float | None:
        udp_lockstep(pair, 1)
        agent.wait_for_collections(1)
        now = _backlog(agent)
        return now if now > before else None

    return agent.wait_until(counted, 30, "a datagram of the recreated namespace to be measured")


def test_recreated_namespace_and_interface_are_measured_again(require_root, start_agent):
    pair = make_veth_pair()
    other = make_veth_pair()  # never filtered: never counted
    try:
        agent = start_agent("--netns", pair.b, "--interface", pair.dev_b, "--interval", "0.5")
        dev = f"interface {pair.dev_b!r} in network namespace {pair.b!r}"
        ns = f"WARNING network namespace {pair.b!r}"

        assert udp_lockstep(pair, N) == N
        agent.wait_for_collections(2)
        assert _backlog(agent) == N

        # The interface alone, deleted and created again in the same namespace: a new index.
        pair.ip(pair.a, "link", "del", pair.dev_a)
        _wait_lines(agent, f"{dev} is gone", 1)
        link_veth(pair)
        _wait_lines(agent, f"{dev} is back", 1)
        assert udp_lockstep(pair, N) == N
        agent.wait_for_collections(2)
        assert _backlog(agent) == 2 * N

        # The namespaces, deleted and created again: a new inode, and the veth in it anew.
        remove_veth_pair(pair)
        _wait_lines(agent, f"{ns} is gone", 1)
        make_veth_pair(pair)
        _wait_lines(agent, f"{ns} is back", 1)
        _wait_lines(agent, f"{dev} is back", 2)
        assert udp_lockstep(pair, N) == N
        agent.wait_for_collections(2)
        assert _backlog(agent) == 3 * N

        # Traffic of a namespace the filter does not name is still not measured.
        assert udp_lockstep(other, N) == N
        agent.wait_for_collections(2)
        assert _backlog(agent) == 3 * N

        # Churn faster than the agent looks: it never crashes, and once the churn stops the
        # last incarnation is measured, exactly.
        for _ in range(CHURN):
            remove_veth_pair(pair)
            make_veth_pair(pair)
        base = _wait_measured(agent, pair)
        assert udp_lockstep(pair, N) == N
        agent.wait_for_collections(2)
        assert _backlog(agent) == base + N

        log = agent.output(None)
        assert agent.running and "Traceback" not in log
        # One line per change it saw, never per packet or per read: at most one "gone" and
        # one "back"/"recreated" per name and cycle (two names, CHURN + 3 cycles).
        changes = sum(log.count(word) for word in (" is gone ", " is back ", " was recreated "))
        assert changes <= 2 * 2 * (CHURN + 3), log
    finally:
        remove_veth_pair(pair)
        remove_veth_pair(other)
