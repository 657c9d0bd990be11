"""Media quality benchmark: pqcall's call pipeline against the prototype's, side by side.

``python -m pqcall.bench media [--quick] [--json PATH] [--corpus | --no-corpus]
[--cpu-hog N] [--bottleneck KBPS,...]``
(or ``pqcall bench media``) sends speech, voice by voice
(:mod:`pqcall.bench.speech`: each of the speech corpus's ten voices, answered
by the next one; without the corpus ``media/samples/alice.wav``, answered with
``bob.wav``), through two real call pipelines, in real time, on loopback UDP,
through the same :class:`~pqcall.netem.ImpairmentRelay`:

* pqcall: two ``MediaSession`` objects at default settings: Opus encode,
  SFrame protect, UDP, relay, SFrame unprotect, jitter buffer, decode with
  FEC or concealment, sink;
* the prototype (:mod:`pqcall.bench.baseline`): 16 kHz PCM in 64 ms
  frames, AES-256-GCM per frame, no jitter buffer, a lost frame is silence.

Conditions (:data:`CONDITIONS`), each with its own seed (the reverse
direction uses seed + 1): no loss, 5 %, 10 % and 20 % random loss, 10 %
bursty loss (Gilbert-Elliott, mean burst 3 datagrams) and 30 ms jitter
(normal, standard deviation 30 ms around no base delay, clipped at zero:
packets reorder). Loss is drawn per datagram, so the same seed drops the
same share of each system's packets, though a prototype packet carries
64 ms of audio and a pqcall one 20 ms. Every condition runs :data:`REPEATS`
times for each voice, each time with another seed (:func:`repeat_seed`; the
voices share the seeds), and each figure is the mean over the runs: one loss
pattern is a small sample (PESQ-WB at 20 % loss moves by about 0.1 from one
seed to the next, and CPU time by a few tenths of a percent from one run to
the next on a shared machine). More
runs, once each and on the first voice only: pqcall at 10 ms frames
(latency); pqcall at 10 % loss with its playout clock in phase with the
sender's (the worst phase, see ``Scenario.phase_frames``); and both systems
with 30 ms jitter switched off mid-call, to time how fast the jitter-buffer
delay comes back down.

For each: PESQ-WB (:mod:`pqcall.bench.quality`: resampled to 16 kHz with
soxr, aligned by cross-correlation, P.862.2), wire bitrate with IPv4, UDP and
SFrame overhead, mean jitter-buffer delay, one-way latency from a frame
complete at the source to its first sample handed to the sink (median and
95th percentile) and CPU per call side (:mod:`pqcall.bench.call` says how
each is measured). Every condition's figures come per voice, over all
voices (the mean) and for the worst voice (:func:`pqcall.bench.report.voice_figures`);
a table of PESQ-WB per voice and condition, and the worst voice, are printed,
then what a user hears per condition (:mod:`pqcall.bench.media_heard`: the
worst voice, the worst run, concealed ms per side, the encoder's mode time
share, late packets). ``--cpu-hog N`` runs N busy processes
(:mod:`pqcall.bench.hog`) beside the calls, to measure a busy machine.

Runtime: every call is real time, the speech and a second: on the corpus
(about 10 s a voice) 364 calls, about 35 minutes; on the samples (21 s)
40 calls, about 7.5 minutes (``--quick``: 4 s of speech of two voices, no
loss and 10 % loss only, one run each, about 30 s). Two
worker processes run two calls at a time, one per core; each measures only
its own call's CPU time (the relay runs in a third process). With one core,
calls run one by one.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Final

from pqcall.bench.baseline import FRAME_MS as PROTOTYPE_FRAME_MS
from pqcall.bench.call import CallRecord, Scenario, run_call
from pqcall.bench.hog import CpuHogs
from pqcall.bench.media_heard import heard_table, worst_run_figures
from pqcall.bench.quality import REFERENCE_RATE_HZ, Samples, align, check_pesq, pesq_wb
from pqcall.bench.report import Figure, render_columns, voice_figures, worst_voice
from pqcall.bench.speech import Talker, call_pairs, select_speech
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusEncoder, OpusSettings
from pqcall.netem import GilbertElliott, Impairment
from pqcall.transport.session import MediaSettings

__all__ = ["CONDITIONS", "QUICK_CONDITIONS", "REPEATS", "Runs", "ScoredCall", "repeat_seed", "run"]

PQCALL: Final = "pqcall"
PROTOTYPE: Final = "prototype"
PROTOTYPE_NAME: Final = "prototype: 16 kHz PCM, 64 ms, no jitter buffer"

QUICK_SPEECH_S: Final = 4.0
WORKERS: Final = 2
"""Calls run at once (one per core; fewer if the machine has fewer)."""
WARMUP_S: Final = 1.0
"""The first second of a call (the buffer filling) does not count in delay means."""
SETTLE_CALM_S: Final = 3.0
"""Settle run: a calm start, which sets the jitter-buffer delay's minimum."""
SETTLE_JITTER_S: Final = 5.0
"""Settle run: then this long with the 30 ms jitter condition."""
SETTLE_WINDOW_S: Final = 15.0
"""Settle run: then this long calm, watching the delay come back down."""
SETTLE_TOLERANCE_MS: Final = 5.0
"""Back at the minimum means within this of it (pqcall's delay moves in whole frames)."""

JITTER: Final = Impairment(jitter_ms=30.0, seed=40)
CONDITIONS: Final = (
    ("no loss", Impairment()),
    ("5% random loss", Impairment(loss=0.05, seed=5)),
    ("10% random loss", Impairment(loss=0.10, seed=10)),
    ("20% random loss", Impairment(loss=0.20, seed=20)),
    ("10% bursty loss", Impairment(burst=GilbertElliott.from_mean_loss(0.10, 3.0), seed=30)),
    ("30 ms jitter", JITTER),
)
"""(name, caller-to-callee impairment) of every condition of a full run."""
QUICK_CONDITIONS: Final = (CONDITIONS[0], CONDITIONS[2])
"""The conditions of ``--quick``."""
REPEATS: Final = 3
"""Runs of each condition in a full run, each with its own seed (``--quick``: one)."""
SEED_STRIDE: Final = 1000
"""Run ``r`` of a condition uses the condition's seed plus ``r`` times this."""
TEN_MS: Final = "no loss, 10 ms frames"
IN_PHASE: Final = "10% random loss, clocks in phase"
SETTLE: Final = "30 ms jitter, then none"


@dataclass(frozen=True, slots=True)
class ScoredCall:
    """One call's figures."""

    record: CallRecord
    """What the call measured."""
    pesq: float
    """PESQ-WB of what the callee heard."""

    @property
    def latency_p50_ms(self) -> float:
        """Median one-way latency."""
        return _percentile(self.record.latencies_ms, 50)

    @property
    def latency_p95_ms(self) -> float:
        """95th percentile of the one-way latency."""
        return _percentile(self.record.latencies_ms, 95)

    @property
    def buffer_ms(self) -> float:
        """Mean jitter-buffer delay (the prototype: backlog in the device queue)."""
        values = [ms for t, ms in self.record.buffer_ms if t >= WARMUP_S]
        return statistics.fmean(values) if values else 0.0

    @property
    def cpu_percent(self) -> float:
        """CPU per call side, percent of one core."""
        return self.record.cpu_percent_per_side


@dataclass(frozen=True, slots=True)
class Runs:
    """The runs of one system in one condition; each figure is the mean over them."""

    calls: tuple[ScoredCall, ...]

    def mean(self, value: Callable[[ScoredCall], float]) -> float:
        """The mean of ``value`` over the runs."""
        return statistics.fmean(value(call) for call in self.calls)

    def spread(self, value: Callable[[ScoredCall], float]) -> tuple[float, float]:
        """The lowest and highest ``value`` of a run."""
        values = [value(call) for call in self.calls]
        return min(values), max(values)


def repeat_seed(impairment: Impairment, repeat: int) -> Impairment:
    """``impairment`` for run ``repeat`` of its condition: the same, with its own seed."""
    return replace(impairment, seed=impairment.seed + repeat * SEED_STRIDE)


def _percentile(values: Sequence[float], percent: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(percent / 100 * len(ordered)) - 1))]


def _score(record: CallRecord, reference: Samples) -> ScoredCall:
    aligned, _ = align(record.received, reference)
    return ScoredCall(record, pesq_wb(reference, aligned))


def settle_s(
    buffer_ms: Sequence[tuple[float, float]], calm_s: float, stop_s: float
) -> float | None:
    """Seconds from ``stop_s`` until the delay is back at its calm minimum for good.

    Args:
        buffer_ms: (seconds since the start, delay in ms) samples.
        calm_s: the delay's minimum is taken over [:data:`WARMUP_S`, ``calm_s``).
        stop_s: when the jitter stopped.

    Returns:
        The seconds, or None if the delay is not back by the last sample.
    """
    calm = [ms for t, ms in buffer_ms if WARMUP_S <= t < calm_s]
    after = [(t, ms) for t, ms in buffer_ms if t >= stop_s]
    if not calm or not after:
        return None
    floor = min(calm) + SETTLE_TOLERANCE_MS
    high = [t for t, ms in after if ms > floor]
    if not high:
        return 0.0
    if high[-1] >= after[-1][0]:
        return None
    later = [t for t, _ in after if t > high[-1]]
    return later[0] - stop_s


Job = tuple[str, Scenario, Talker, Talker]
"""(system, scenario, the caller's voice, the callee's voice)."""


def _jobs(quick: bool, pairs: Sequence[tuple[Talker, Talker]]) -> list[Job]:
    conditions = QUICK_CONDITIONS if quick else CONDITIONS
    jobs = [
        (
            system,
            Scenario(name, repeat_seed(impairment, repeat), speech_s=caller.seconds),
            caller,
            reply,
        )
        for repeat in range(1 if quick else REPEATS)
        for caller, reply in pairs
        for name, impairment in conditions
        for system in (PQCALL, PROTOTYPE)
    ]
    if quick:
        return jobs
    caller, reply = pairs[0]
    speech_s = caller.seconds
    ten_ms = MediaSettings(opus=OpusSettings(frame_ms=10))
    settle = Scenario(
        SETTLE,
        JITTER,
        speech_s=SETTLE_CALM_S + SETTLE_JITTER_S + SETTLE_WINDOW_S,
        impaired_between_s=(SETTLE_CALM_S, SETTLE_CALM_S + SETTLE_JITTER_S),
    )
    extras = [
        (PQCALL, settle),
        (PROTOTYPE, settle),
        (PQCALL, Scenario(TEN_MS, speech_s=speech_s, settings=ten_ms)),
        (PQCALL, Scenario(IN_PHASE, CONDITIONS[2][1], speech_s=speech_s, phase_frames=0.0)),
    ]
    return jobs + [(system, scenario, caller, reply) for system, scenario in extras]


def _run_all(jobs: Sequence[Job]) -> list[CallRecord]:
    """Every job's call record, in job order."""
    workers = min(WORKERS, os.cpu_count() or 1)
    if workers < 2:
        return [run_call(sys_, sc, caller.speech, reply.speech) for sys_, sc, caller, reply in jobs]
    # spawn: fresh interpreters (forking a process that runs threads is unsafe)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [
            pool.submit(run_call, system, scenario, caller.speech, reply.speech)
            for system, scenario, caller, reply in jobs
        ]
        return [future.result() for future in futures]


_PESQ: Final[Callable[[ScoredCall], float]] = attrgetter("pesq")
_KBPS: Final[Callable[[ScoredCall], float]] = attrgetter("record.kbps")
_BUFFER: Final[Callable[[ScoredCall], float]] = attrgetter("buffer_ms")
_LATENCY_P50: Final[Callable[[ScoredCall], float]] = attrgetter("latency_p50_ms")
_LATENCY_P95: Final[Callable[[ScoredCall], float]] = attrgetter("latency_p95_ms")
_CPU: Final[Callable[[ScoredCall], float]] = attrgetter("cpu_percent")
_METRICS: Final = (
    ("PESQ-WB", "MOS", _PESQ),
    ("wire bitrate", "kbit/s", _KBPS),
    ("jitter-buffer delay", "ms", _BUFFER),
    ("latency p50", "ms", _LATENCY_P50),
    ("latency p95", "ms", _LATENCY_P95),
    ("CPU per call side", "% core", _CPU),
)
_HIGHER_IS_BETTER: Final = frozenset({"PESQ-WB"})
"""Metrics whose worst voice is the lowest value (the others: the highest)."""


Scored = dict[tuple[str, str], Runs]
"""(system, condition) -> its runs, all voices."""
ByVoice = dict[tuple[str, str, str], Runs]
"""(system, condition, voice) -> its runs."""


def _condition_figures(
    names: Sequence[str], voices: Sequence[str], by_voice: ByVoice
) -> list[Figure]:
    figures: list[Figure] = []
    for metric, unit, value in _METRICS:
        for name in names:
            per_voice = {
                voice: (
                    by_voice[PQCALL, name, voice].mean(value),
                    by_voice[PROTOTYPE, name, voice].mean(value),
                )
                for voice in voices
            }
            figures += voice_figures(
                f"{metric}, {name}",
                unit,
                PROTOTYPE_NAME,
                per_voice,
                higher_is_better=metric in _HIGHER_IS_BETTER,
            )
    return figures


_EXTRA_RUNS: Final = {
    TEN_MS: (CONDITIONS[0][0], ("PESQ-WB", "latency p50", "latency p95")),
    IN_PHASE: (CONDITIONS[2][0], ("PESQ-WB", "latency p50")),
}
"""pqcall-only runs: the prototype condition each is compared with, and its figures."""


def _extra_figures(
    scored: Scored, by_voice: ByVoice, first_voice: str, records: Sequence[CallRecord]
) -> list[Figure]:
    ours, theirs = scored[PQCALL, CONDITIONS[0][0]], scored[PROTOTYPE, CONDITIONS[0][0]]
    # mouth to ear, less the sound cards: framing and codec delay come before the pipeline
    lookahead_ms = 1000.0 * OpusEncoder().lookahead_samples / SAMPLE_RATE_HZ
    figures = [
        Figure(
            "frame + codec lookahead + latency p50, no loss",
            MediaSettings().opus.frame_ms + lookahead_ms + ours.mean(_LATENCY_P50),
            "ms",
            "prototype: 64 ms frame + latency p50",
            PROTOTYPE_FRAME_MS + theirs.mean(_LATENCY_P50),
        )
    ]
    for name, (condition, metrics) in _EXTRA_RUNS.items():
        if (PQCALL, name) not in scored:
            continue
        # the extra runs play the first voice: compared with the prototype on that voice
        extra, baseline = scored[PQCALL, name], by_voice[PROTOTYPE, condition, first_voice]
        figures += [
            Figure(
                f"{metric}, {name}", extra.mean(value), unit, PROTOTYPE_NAME, baseline.mean(value)
            )
            for metric, unit, value in _METRICS
            if metric in metrics
        ]
    settling = {r.system: r for r in records if r.scenario == SETTLE}
    if settling:
        figures += _settle_figures(settling[PQCALL].buffer_ms, settling[PROTOTYPE].buffer_ms)
    return figures


def _settle_figures(
    ours: Sequence[tuple[float, float]], theirs: Sequence[tuple[float, float]]
) -> list[Figure]:
    stop = SETTLE_CALM_S + SETTLE_JITTER_S
    end = stop + SETTLE_WINDOW_S
    ours_s, theirs_s = (settle_s(series, SETTLE_CALM_S, stop) for series in (ours, theirs))
    never = f" (not within {SETTLE_WINDOW_S:g} s)"
    return [
        Figure(
            f"jitter-buffer delay {SETTLE_WINDOW_S:g} s after jitter stops (minimum: 1 frame)",
            _window_mean(ours, end - 1.0, end),
            "ms",
            "prototype: device-queue backlog",
            _window_mean(theirs, end - 1.0, end),
        ),
        Figure(
            "jitter-buffer delay back to minimum after jitter stops"
            + (never if ours_s is None else ""),
            SETTLE_WINDOW_S if ours_s is None else ours_s,
            "s",
            "prototype: device-queue backlog" + (never if theirs_s is None else ""),
            SETTLE_WINDOW_S if theirs_s is None else theirs_s,
        ),
    ]


def _window_mean(series: Sequence[tuple[float, float]], start: float, end: float) -> float:
    values = [ms for t, ms in series if start <= t < end]
    return statistics.fmean(values) if values else math.nan


def _both(fmt: str, value: Callable[[ScoredCall], float], ours: Runs, theirs: Runs | None) -> str:
    text = fmt.format(ours.mean(value))
    return text if theirs is None else f"{text}/{fmt.format(theirs.mean(value))}"


def _latency(runs: Runs | None) -> str:
    if runs is None:
        return ""
    return f"{runs.mean(_LATENCY_P50):.1f}/{runs.mean(_LATENCY_P95):.1f}"


def _range(value: Callable[[ScoredCall], float], runs: Runs) -> str:
    low, high = runs.spread(value)
    return f"{low:.2f}-{high:.2f}" if len(runs.calls) > 1 else ""


def _summary(names: Sequence[str], scored: Scored) -> str:
    """One row per condition: pqcall / prototype for each figure (means over the runs)."""
    rows = [
        (
            "condition",
            "runs",
            "PESQ-WB",
            "PESQ range",
            "wire kbit/s",
            "JB delay ms",
            "latency p50/p95 ms",
            "CPU %/side",
            "CPU range",
        ),
        (
            "",
            "",
            "pqcall/proto",
            "pqcall",
            "pqcall/proto",
            "pqcall/proto",
            "pqcall | proto",
            "pqcall/proto",
            "pqcall",
        ),
    ]
    for name in names:
        ours, theirs = scored[PQCALL, name], scored.get((PROTOTYPE, name))
        rows.append(
            (
                name,
                str(len(ours.calls)),
                _both("{:.2f}", _PESQ, ours, theirs),
                _range(_PESQ, ours),
                _both("{:.1f}", _KBPS, ours, theirs),
                _both("{:.1f}", _BUFFER, ours, theirs),
                _latency(ours) + ("" if theirs is None else " | " + _latency(theirs)),
                _both("{:.2f}", _CPU, ours, theirs),
                _range(_CPU, ours),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _voice_summary(names: Sequence[str], talkers: Sequence[Talker], by_voice: ByVoice) -> str:
    """PESQ-WB per voice and condition (pqcall/prototype, means over the runs), mean, worst."""
    header = ["voice", "who", *names]
    pairs = {
        t.name: [
            (
                by_voice[PQCALL, name, t.name].mean(_PESQ),
                by_voice[PROTOTYPE, name, t.name].mean(_PESQ),
            )
            for name in names
        ]
        for t in talkers
    }
    rows = [
        [t.name, t.description, *(f"{a:.2f}/{b:.2f}" for a, b in pairs[t.name])] for t in talkers
    ]
    for label, combine in (("mean", statistics.fmean), ("worst voice", min)):
        cells = []
        for index in range(len(names)):
            ours = combine(pairs[t.name][index][0] for t in talkers)
            theirs = combine(pairs[t.name][index][1] for t in talkers)
            cells.append(f"{ours:.2f}/{theirs:.2f}")
        rows.append([label, "", *cells])
    worst = {
        name: worst_voice({t.name: pairs[t.name][index][0] for t in talkers}, higher_is_better=True)
        for index, name in enumerate(names)
    }
    line = "; ".join(
        f"{name}: {voice} ({pairs[voice][names.index(name)][0]:.2f})"
        for name, voice in worst.items()
    )
    return (
        render_columns("PESQ-WB per voice, pqcall/prototype", header, rows)
        + f"\nworst voice by PESQ-WB: {line}"
    )


def run(
    *,
    quick: bool = False,
    corpus: bool | None = None,
    cpu_hogs: int = 0,
    bottleneck: Sequence[float] = (),
) -> list[Figure]:
    """Run every call, print a summary per condition and per voice, return the figures.

    Args:
        quick: a short run (see the module docstring).
        corpus: the speech corpus (True), the two samples (False), or the
            corpus if it can be built (None).
        cpu_hogs: busy processes to run beside the calls (stopped after).
        bottleneck: rates in kbit/s: run only the bottleneck scenario at each
            (:mod:`pqcall.bench.media_bottleneck`), on the first voice.

    Raises:
        PqcallError: the ``pesq`` package is missing.
        CorpusUnavailable: ``corpus`` is True and the corpus cannot be built.
    """
    check_pesq()
    talkers = select_speech(corpus, quick=quick)
    if bottleneck:
        from pqcall.bench.media_bottleneck import run_bottlenecks  # only this scenario

        with CpuHogs(cpu_hogs):
            return run_bottlenecks(bottleneck, talkers)
    if quick:
        limit = round(QUICK_SPEECH_S * REFERENCE_RATE_HZ)
        talkers = tuple(replace(t, speech=t.speech[:limit]) for t in talkers)
    pairs = call_pairs(talkers)
    callers = [caller for caller, _ in pairs]
    jobs = _jobs(quick, pairs)
    print(
        f"media bench: {len(jobs)} calls in real time, {len(callers)} voice(s)...",
        file=sys.stderr,
        flush=True,
    )
    with CpuHogs(cpu_hogs) as hogs:
        records = _run_all(jobs)
    if cpu_hogs:
        print(hogs.describe(), file=sys.stderr, flush=True)
    runs: defaultdict[tuple[str, str], list[ScoredCall]] = defaultdict(list)
    voice_runs: defaultdict[tuple[str, str, str], list[ScoredCall]] = defaultdict(list)
    heard: defaultdict[tuple[str, str, str], list[tuple[float, CallRecord]]] = defaultdict(list)
    for (system, _, caller, _), record in zip(jobs, records, strict=True):
        if record.scenario != SETTLE:
            call = _score(record, caller.speech)
            runs[system, record.scenario].append(call)
            voice_runs[system, record.scenario, caller.name].append(call)
            heard[system, record.scenario, caller.name].append((call.pesq, record))
    scored = {key: Runs(tuple(calls)) for key, calls in runs.items()}
    by_voice = {key: Runs(tuple(calls)) for key, calls in voice_runs.items()}
    names = [name for name, _ in (QUICK_CONDITIONS if quick else CONDITIONS)]
    extra = [name for name in _EXTRA_RUNS if (PQCALL, name) in scored]
    print("pqcall bench media: per condition, all voices\n")
    print(_summary(names + extra, scored))
    print()
    print(_voice_summary(names, callers, by_voice))
    print()
    if cpu_hogs:
        print(hogs.describe())
    print(heard_table(names, heard, PQCALL, PROTOTYPE))
    print()
    voices = [caller.name for caller in callers]
    return (
        _condition_figures(names, voices, by_voice)
        + worst_run_figures(names, heard, PQCALL, PROTOTYPE, PROTOTYPE_NAME)
        + _extra_figures(scored, by_voice, voices[0], records)
    )
