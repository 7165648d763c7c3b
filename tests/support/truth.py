"""Ground truth for latency: compare an exported histogram with delays the test knows.

A test injects a delay (a reader that sleeps, a tbf rate) or computes one per packet from
its own clock, loads the program with :func:`truth_bounds` (fine buckets around the
expected window, so the window's edges are bucket edges), and calls :func:`assert_truth`.
Counts alone never prove a latency: this compares the values.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from otel_netlat.collect.snapshot import Snapshot
from otel_netlat.commands.watch import quantile
from tests.support.kernel import hist_of

#: How close the histogram's median must be to the expected median (the issue's ±10 %).
P50_TOLERANCE = 0.10
#: The least fraction of samples that must fall inside the expected window.
IN_WINDOW = 0.99


def truth_bounds(lo_s: float, hi_s: float, steps: int = 40) -> tuple[int, ...]:
    """Histogram bounds in ns: log2 from 1 µs below ``lo_s``, ``steps`` even steps to ``hi_s``, then log2.

    Even steps between ``lo_s`` and ``hi_s`` make the interpolated median good to a few
    per cent, where log2 buckets alone (a factor of two wide) could not show ±10 %.
    """
    lo, hi = int(lo_s * 1e9), int(hi_s * 1e9)
    below = [1000 << k for k in range(40) if (1000 << k) < lo]
    even = [lo + (hi - lo) * i // steps for i in range(steps + 1)]
    above = [hi << k for k in range(1, 4)]
    return tuple(sorted({*below, *even, *above}))


@dataclass(frozen=True)
class Truth:
    """What the histogram said next to what the test knew."""

    samples: int
    p50_s: float
    p99_s: float
    expected_p50_s: float
    in_window: float
    window_s: tuple[float, float]

    def row(self, stage: str) -> str:
        """One line for a report: injected vs measured."""
        return (
            f"{stage}: expected p50 {self.expected_p50_s * 1e3:.3f} ms, measured p50 "
            f"{self.p50_s * 1e3:.3f} ms, p99 {self.p99_s * 1e3:.3f} ms, {self.samples} samples, "
            f"{self.in_window:.4f} in [{self.window_s[0] * 1e3:.3f}, {self.window_s[1] * 1e3:.3f}] ms"
        )


def measure(
    snap: Snapshot, expected_s: Sequence[float], window_s: tuple[float, float], **match: str
) -> Truth:
    """The histogram of series matching ``match`` against per-packet expected delays."""
    buckets, count, _ = hist_of(snap, **match)
    bounds = snap.bounds_s
    lo, hi = window_s
    inside = 0
    for i, c in enumerate(buckets):
        b_lo = bounds[i - 1] if i else 0.0
        b_hi = bounds[i] if i < len(bounds) else float("inf")
        if b_lo >= lo - 1e-12 and b_hi <= hi + 1e-12:
            inside += c
    return Truth(
        samples=count,
        p50_s=quantile(bounds, tuple(buckets), 0.5),
        p99_s=quantile(bounds, tuple(buckets), 0.99),
        expected_p50_s=statistics.median(expected_s),
        in_window=inside / count if count else 0.0,
        window_s=window_s,
    )


def edges_around(bounds_s: Sequence[float], lo_s: float, hi_s: float) -> tuple[float, float]:
    """The widest bucket edges inside which [lo_s, hi_s] falls (the window, on edges)."""
    lo = max((b for b in bounds_s if b <= lo_s), default=0.0)
    hi = min((b for b in bounds_s if b >= hi_s), default=float("inf"))
    return lo, hi


def assert_truth(truth: Truth, stage: str, min_samples: int) -> None:
    """p50 within ±10 % of the expected median and ≥ 99 % of samples inside the window."""
    assert truth.samples >= min_samples, f"{truth.row(stage)}: fewer than {min_samples} samples"
    err = abs(truth.p50_s - truth.expected_p50_s) / truth.expected_p50_s
    assert err <= P50_TOLERANCE, f"{truth.row(stage)}: p50 off by {err:.1%}"
    assert truth.in_window >= IN_WINDOW, f"{truth.row(stage)}: too few samples in the window"


def assert_cdf_close(snap: Snapshot, expected_s: Sequence[float], tolerance: float, **match: str) -> None:
    """At every bucket bound, the histogram's CDF is within ``tolerance`` of the expected one."""
    buckets, count, _ = hist_of(snap, **match)
    assert count, f"no samples for {match}"
    seen = 0
    worst = (0.0, 0.0)
    for i, bound in enumerate(snap.bounds_s):
        seen += buckets[i]
        gap = abs(seen / count - sum(1 for e in expected_s if e <= bound) / len(expected_s))
        worst = max(worst, (gap, bound))
    assert worst[0] <= tolerance, f"CDF off by {worst[0]:.3f} at {worst[1] * 1e3:.3f} ms"
