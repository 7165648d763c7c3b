"""Ground truth for ``accept``: a server that sleeps D before accepting.

Each connection's wait is known to the test: from its handshake's end (``connect()``
returning on the client) until ``accept()`` returned it on the server (the accept queue is
FIFO). The stage's end is fexit of ``inet_csk_accept``, so this runs in the Debian guests
only (``make test-kernels``); on the host the stage is reported unavailable, with the reason
(tests/unit/test_plan.py).
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace

from otel_netlat.config import Config
from otel_netlat.program.build import load_program
from otel_netlat.program.plan import plan_for_this_kernel
from tests.support.kernel import Loaded, assert_identity
from tests.support.netns import socket_in
from tests.support.truth import assert_truth, edges_around, measure, truth_bounds

DELAY_S = 0.3
N = 5


def test_accept_waits_until_the_server_accepts(veth_pair):
    plan = plan_for_this_kernel(Config(stages=("accept",), netns=(veth_pair.b,)))
    assert [s.name for s in plan.spec.stages] == ["accept"], plan.unavailable
    loaded = Loaded(load_program(replace(plan.spec, bounds_ns=truth_bounds(0.1, 0.6)), plan.info))
    listener = socket_in(veth_pair.b, socket.AF_INET, socket.SOCK_STREAM)
    clients = [socket_in(veth_pair.a, socket.AF_INET, socket.SOCK_STREAM) for _ in range(N)]
    try:
        listener.bind((veth_pair.b4, 0))
        listener.listen(N)
        connected, accepted = [], []
        for c in clients:
            c.connect(listener.getsockname())
            connected.append(time.monotonic())
        time.sleep(DELAY_S)  # the injected delay: the server is slow to accept
        for _ in clients:
            server, _ = listener.accept()
            accepted.append(time.monotonic())
            server.close()
        expected = [a - c for a, c in zip(accepted, connected, strict=True)]
        snap = loaded.read()
        window = edges_around(snap.bounds_s, min(expected) * 0.9, max(expected) * 1.1)
        truth = measure(snap, expected, window, netlat_stage="accept", network_transport="tcp")
        print(truth.row("accept"))
        assert truth.samples == N, truth.row("accept")
        assert_truth(truth, "accept", N)
        assert_identity(snap, "accept")
    finally:
        for s in (listener, *clients):
            s.close()
        loaded.close()
