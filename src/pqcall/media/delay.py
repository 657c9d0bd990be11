"""The jitter buffer's delay estimator: how much buffering the network needs now.

Scope: one number, :attr:`RelativeDelayEstimator.estimate_ms`, the extra
delay (beyond one frame) the jitter buffer should hold so that nearly every
packet arrives before its playout time. Pure: transit times and ``now`` in.

How it estimates:

* Each packet's *relative delay*, as in WebRTC NetEq: its transit time
  (arrival time minus media timestamp) minus the smallest transit time seen
  in the last :data:`DELAY_HISTORY_S`. A packet with relative delay ``d``
  needs ``d`` ms of buffering to be on time; sender and receiver clocks need
  no synchronisation (the unknown offset cancels).
* The need is the :data:`DELAY_QUANTILE` of the relative delays in that
  window.
* Fast up, slow down: a measurement above the estimate is taken at once; a
  lower one is approached exponentially (time constant
  :data:`TARGET_DECAY_TIME_CONSTANT_S`) but never slower than
  :data:`TARGET_MIN_DECAY_MS_PER_S`, so the estimate reaches the measurement
  in finite time (back at the minimum well inside 10 s after jitter stops).

Why this estimator and not RFC 3550's interarrival jitter, and why the 95th
percentile: ``docs/decisions/0103-jitter-delay-estimator.md``.

Memory is bounded by :data:`DELAY_HISTORY_MAX_SAMPLES` whatever the packet rate.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from typing import Final

DELAY_HISTORY_S: Final = 2.0
"""How long a transit time counts as the reference and as a sample of need."""

DELAY_QUANTILE: Final = 0.95
"""Fraction of recent packets the estimate must bring in on time."""

DELAY_HISTORY_MAX_SAMPLES: Final = 512
"""Hard cap on remembered samples (2 s of 10 ms frames is 200)."""

TARGET_DECAY_TIME_CONSTANT_S: Final = 1.0
"""Time constant of the exponential decay toward a lower measurement."""

TARGET_MIN_DECAY_MS_PER_S: Final = 40.0
"""Slowest decay, so an exponential tail does not hold a whole extra frame."""


class RelativeDelayEstimator:
    """Tracks the buffering delay the network currently needs, in ms.

    Call :meth:`observe` for every packet that is not a duplicate (late ones
    included: they are the evidence), and :meth:`advance` whenever time passes
    without packets, so the estimate decays during silence too. Its zero value
    (no samples) is an estimate of 0 ms: no jitter seen.

    Cost per packet: the window's reference (its smallest transit time) is a
    monotonic queue, and the relative delays are kept sorted, each inserted
    once with ``bisect.insort`` and removed once when it expires, so the
    quantile is one index: O(log n) compares and one short ``memmove``, where
    re-sorting the 2 s history on every packet cost a sort of up to
    :data:`DELAY_HISTORY_MAX_SAMPLES` values.
    """

    def __init__(self) -> None:
        # (serial, arrival time s, relative delay ms), oldest first
        self._samples: deque[tuple[int, float, float]] = deque()
        self._ordered: list[float] = []  # the samples' relative delays, ascending
        # (serial, transit s) of the samples that can still become the reference:
        # each one newer and with a larger transit than the one before it
        self._minima: deque[tuple[int, float]] = deque()
        self._serial = 0  # of the next sample
        self._estimate_ms = 0.0  # current smoothed estimate
        self._updated_at: float | None = None  # ``now`` of the last update

    @property
    def estimate_ms(self) -> float:
        """Extra buffering the network needs now, in ms (>= 0)."""
        return self._estimate_ms

    def observe(self, transit_s: float, now: float) -> float:
        """Record a packet's transit time (arrival minus media time, in seconds).

        Returns:
            The packet's relative delay in ms.
        """
        if self._samples and self._samples[0][1] <= now - DELAY_HISTORY_S:
            self._expire(now)
        minima = self._minima
        reference = minima[0][1] if minima and minima[0][1] < transit_s else transit_s
        relative_ms = (transit_s - reference) * 1000.0
        if len(self._samples) >= DELAY_HISTORY_MAX_SAMPLES:
            self._drop_oldest()
        serial = self._serial
        self._serial = serial + 1
        self._samples.append((serial, now, relative_ms))
        insort(self._ordered, relative_ms)
        while minima and minima[-1][1] >= transit_s:
            minima.pop()
        minima.append((serial, transit_s))
        self._settle(now)
        return relative_ms

    def advance(self, now: float) -> None:
        """Let time pass: forget old samples and decay the estimate."""
        if self._samples and self._samples[0][1] <= now - DELAY_HISTORY_S:
            self._expire(now)
        self._settle(now)

    def forget_history(self) -> None:
        """Drop every sample (the sender's clock changed) but keep the estimate.

        The estimate describes the network path, which a sender restart does
        not change; it decays on its own if the new stream is calmer.
        """
        self._samples.clear()
        self._ordered.clear()
        self._minima.clear()

    def _expire(self, now: float) -> None:
        horizon = now - DELAY_HISTORY_S
        samples = self._samples
        while samples and samples[0][1] <= horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        serial, _, relative_ms = self._samples.popleft()
        ordered = self._ordered
        del ordered[bisect_left(ordered, relative_ms)]
        if self._minima[0][0] == serial:
            self._minima.popleft()

    def _settle(self, now: float) -> None:
        ordered = self._ordered
        # the quantile of the window: one index into the sorted delays (0 or more: n >= 1)
        measured = ordered[math.ceil(DELAY_QUANTILE * len(ordered)) - 1] if ordered else 0.0
        updated_at, self._updated_at = self._updated_at, now
        if measured >= self._estimate_ms:
            # fast up: take a higher need at once
            self._estimate_ms = measured
            return
        elapsed = 0.0 if updated_at is None else now - updated_at
        if elapsed <= 0.0:
            return
        # slow down: exponential, but at least the minimum rate
        excess = self._estimate_ms - measured
        step = max(
            excess * (1.0 - math.exp(-elapsed / TARGET_DECAY_TIME_CONSTANT_S)),
            TARGET_MIN_DECAY_MS_PER_S * elapsed,
        )
        self._estimate_ms = max(measured, self._estimate_ms - step)
