"""The bottleneck scenario of ``pqcall bench media --bottleneck KBPS[,KBPS...]``.

A link narrower than the call: each call (pqcall's, then the prototype's, the
same relay, seed and speech) starts on a wide link for :data:`WIDE_S`, then the
relay's :class:`~pqcall.netem.Impairment` bottleneck (``rate_kbps``, a bounded
drop-tail queue of :data:`QUEUE_MS`, both directions) holds for
:data:`NARROW_S`, then the link is wide again for :data:`AFTER_S`. The caller's
speech is the first voice's, looped to the call's length.

Printed: the bottleneck's caller-to-callee backlog over time (one sample a
second, both systems) with pqcall's Opus bitrate; figures: seconds from the
bottleneck's start until the backlog stays under :data:`GOAL_QUEUE_MS`
(the narrow span's length if never), the mean backlog and PESQ-WB from
:data:`ADAPTED_AFTER_S` after the start to the end of the narrow span
("after adapting"), pqcall's Opus bitrate then, and seconds from the link
widening until pqcall is back at its full bitrate. The issue's goals at
32 kbit/s: under 100 ms within 5 s, PESQ-WB 3.5 after adapting.

Runtime: two calls of :data:`WIDE_S` + :data:`NARROW_S` + :data:`AFTER_S`
seconds a rate, two at a time.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Final

import numpy as np

from pqcall.bench.call import CallRecord, Scenario, run_call
from pqcall.bench.quality import REFERENCE_RATE_HZ, Samples, align, pesq_wb
from pqcall.bench.report import Figure
from pqcall.bench.speech import Talker
from pqcall.netem import Impairment

__all__ = ["ADAPTED_AFTER_S", "GOAL_QUEUE_MS", "bottleneck_scenario", "run_bottlenecks"]

WIDE_S: Final = 3.0
"""Wide link before the bottleneck."""
NARROW_S: Final = 20.0
"""The bottleneck's span."""
AFTER_S: Final = 12.0
"""Wide link after it (the rate comes back)."""
QUEUE_MS: Final = 200.0
"""The bottleneck's queue (a drop-tail router's buffer, in ms at its rate)."""
GOAL_QUEUE_MS: Final = 100.0
"""The backlog a call should be back under."""
ADAPTED_AFTER_S: Final = 5.0
"""'After adapting' starts this long after the bottleneck does."""
SEED: Final = 50
PROTOTYPE_NAME: Final = "prototype: 16 kHz PCM, 64 ms, no adaptation"


def bottleneck_scenario(kbps: float) -> Scenario:
    """The scenario of one rate (see the module docstring)."""
    return Scenario(
        f"bottleneck {kbps:g} kbit/s",
        Impairment(rate_kbps=kbps, queue_ms=QUEUE_MS, seed=SEED),
        speech_s=WIDE_S + NARROW_S + AFTER_S,
        impaired_between_s=(WIDE_S, WIDE_S + NARROW_S),
    )


def _looped(speech: Samples, seconds: float) -> Samples:
    length = round(seconds * REFERENCE_RATE_HZ)
    return np.resize(speech, length)


def under_goal_s(queue_ms: Sequence[tuple[float, float]]) -> float:
    """Seconds from the bottleneck's start until the backlog stays under the goal."""
    end = WIDE_S + NARROW_S
    over = [t for t, ms in queue_ms if WIDE_S <= t < end and ms >= GOAL_QUEUE_MS]
    return (over[-1] - WIDE_S) if over else 0.0


def _adapted(series: Sequence[tuple[float, float]]) -> float:
    values = [v for t, v in series if WIDE_S + ADAPTED_AFTER_S <= t < WIDE_S + NARROW_S]
    return statistics.fmean(values) if values else math.nan


def full_rate_again_s(opus_kbps: Sequence[tuple[float, float]]) -> float:
    """Seconds from the link widening until the bitrate is back at its first value, for good."""
    if not opus_kbps:
        return math.nan
    full = opus_kbps[0][1]
    widened = WIDE_S + NARROW_S
    below = [t for t, kbps in opus_kbps if t >= widened and kbps < full]
    if below and below[-1] >= opus_kbps[-1][0]:
        return math.nan  # not back by the end
    return (below[-1] - widened + 0.1) if below else 0.0


def _pesq_adapted(record: CallRecord, reference: Samples) -> float:
    """PESQ-WB of the span after adapting, aligned on its own (the delay moved before it)."""
    start = round((WIDE_S + ADAPTED_AFTER_S) * REFERENCE_RATE_HZ)
    stop = round((WIDE_S + NARROW_S) * REFERENCE_RATE_HZ)
    aligned, _ = align(record.received, reference[start:stop])
    return pesq_wb(reference[start:stop], aligned)


def _timeline(kbps: float, ours: CallRecord, theirs: CallRecord) -> str:
    def at(series: Sequence[tuple[float, float]], second: int) -> float:
        values = [v for t, v in series if second <= t < second + 1]
        return max(values) if values else math.nan

    lines = [
        f"bottleneck {kbps:g} kbit/s from {WIDE_S:g} s to {WIDE_S + NARROW_S:g} s:",
        "  s  backlog ms pqcall/proto  pqcall Opus kbit/s",
    ]
    for second in range(round(WIDE_S + NARROW_S + AFTER_S)):
        lines.append(
            f"{second:3d}  {at(ours.queue_ms, second):7.0f} /{at(theirs.queue_ms, second):5.0f}"
            f"  {at(ours.opus_kbps, second):8.1f}"
        )
    return "\n".join(lines)


def run_bottlenecks(rates_kbps: Sequence[float], talkers: Sequence[Talker]) -> list[Figure]:
    """Run each rate's two calls, print the timelines, return the figures."""
    caller, reply = talkers[0], talkers[1 % len(talkers)]
    seconds = WIDE_S + NARROW_S + AFTER_S
    speech, answer = _looped(caller.speech, seconds), _looped(reply.speech, seconds)
    jobs = [(system, kbps) for kbps in rates_kbps for system in ("pqcall", "prototype")]
    print(f"media bench: {len(jobs)} bottleneck calls in real time...", file=sys.stderr)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        futures = [
            pool.submit(run_call, system, bottleneck_scenario(kbps), speech, answer)
            for system, kbps in jobs
        ]
        records = [future.result() for future in futures]
    figures: list[Figure] = []
    for index, kbps in enumerate(rates_kbps):
        ours, theirs = records[2 * index], records[2 * index + 1]
        print(_timeline(kbps, ours, theirs))
        print()
        name = f"bottleneck {kbps:g} kbit/s"
        figures += [
            Figure(
                f"{name}: backlog under {GOAL_QUEUE_MS:g} ms for good after",
                under_goal_s(ours.queue_ms),
                "s",
                PROTOTYPE_NAME,
                under_goal_s(theirs.queue_ms),
            ),
            Figure(
                f"{name}: mean backlog after adapting",
                _adapted(ours.queue_ms),
                "ms",
                PROTOTYPE_NAME,
                _adapted(theirs.queue_ms),
            ),
            Figure(
                f"{name}: PESQ-WB after adapting ({caller.name})",
                _pesq_adapted(ours, speech),
                "MOS",
                PROTOTYPE_NAME,
                _pesq_adapted(theirs, speech),
            ),
            Figure(
                f"{name}: Opus bitrate after adapting",
                _adapted(ours.opus_kbps),
                "kbit/s",
                "prototype: 16 kHz PCM",
                256.0,
            ),
            Figure(
                f"{name}: full bitrate again after the link widens",
                full_rate_again_s(ours.opus_kbps),
                "s",
                "prototype: never lowered",
                0.0,
            ),
        ]
    return figures
