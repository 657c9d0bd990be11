"""The delay estimator against a plain re-statement of its definition."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.media.delay import (
    DELAY_HISTORY_MAX_SAMPLES,
    DELAY_HISTORY_S,
    DELAY_QUANTILE,
    TARGET_DECAY_TIME_CONSTANT_S,
    TARGET_MIN_DECAY_MS_PER_S,
    RelativeDelayEstimator,
)


class Definition:
    """The estimator as its docstring defines it: the whole window, sorted every time."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (arrival, transit, relative ms)
        self.estimate_ms = 0.0
        self.updated_at: float | None = None

    def observe(self, transit_s: float, now: float) -> float:
        self.expire(now)
        reference = min([s[1] for s in self.samples] + [transit_s])
        relative_ms = (transit_s - reference) * 1000.0
        self.samples = [*self.samples, (now, transit_s, relative_ms)][-DELAY_HISTORY_MAX_SAMPLES:]
        self.settle(now)
        return relative_ms

    def advance(self, now: float) -> None:
        self.expire(now)
        self.settle(now)

    def expire(self, now: float) -> None:
        self.samples = [s for s in self.samples if s[0] > now - DELAY_HISTORY_S]

    def settle(self, now: float) -> None:
        ordered = sorted(s[2] for s in self.samples)
        measured = ordered[max(0, math.ceil(DELAY_QUANTILE * len(ordered)) - 1)] if ordered else 0
        elapsed = 0.0 if self.updated_at is None else max(0.0, now - self.updated_at)
        self.updated_at = now
        if measured >= self.estimate_ms:
            self.estimate_ms = measured
            return
        step = max(
            (self.estimate_ms - measured) * (1 - math.exp(-elapsed / TARGET_DECAY_TIME_CONSTANT_S)),
            TARGET_MIN_DECAY_MS_PER_S * elapsed,
        )
        self.estimate_ms = max(measured, self.estimate_ms - step)


steps = st.lists(
    st.tuples(
        st.sampled_from(["observe", "observe", "observe", "advance", "forget"]),
        st.floats(min_value=0.0, max_value=0.3),  # time step, s
        st.floats(min_value=-1.0, max_value=1.0),  # transit, s
    ),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_incremental_estimator_matches_its_definition(operations):
    estimator, definition = RelativeDelayEstimator(), Definition()
    now = 0.0
    for kind, gap, transit in operations:
        now += gap
        if kind == "observe":
            assert estimator.observe(transit, now) == definition.observe(transit, now)
        elif kind == "advance":
            estimator.advance(now)
            definition.advance(now)
        else:
            estimator.forget_history()
            definition.samples = []
        assert estimator.estimate_ms == definition.estimate_ms


def test_history_is_capped_by_sample_count():
    estimator, definition = RelativeDelayEstimator(), Definition()
    # 3 * cap packets within one window: the oldest leave by count, not by age
    for n in range(3 * DELAY_HISTORY_MAX_SAMPLES):
        now = n * 1e-4
        transit = 0.5 if n < DELAY_HISTORY_MAX_SAMPLES else 0.0 + (n % 7) * 1e-3
        assert estimator.observe(transit, now) == definition.observe(transit, now)
    assert estimator.estimate_ms == definition.estimate_ms
