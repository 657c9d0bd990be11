"""Time stretching in the jitter buffer at 30 ms jitter: on against off (decision 0141).

``python -m pqcall.bench.stretch_calls [--virtual] [--voices N]``:

* default: real-time calls, the media benchmark's harness
  (:mod:`pqcall.bench.media`) at its "30 ms jitter" condition, three seeds,
  the two ``--quick`` voices at full length, with
  :attr:`MediaSettings.time_stretch <pqcall.transport.media_engine.MediaSettings.time_stretch>`
  off and on in the same run (so a loaded machine weighs on both alike);
  per variant PESQ-WB (worst run, worst voice, mean), the mean jitter-buffer
  delay (the buffer's own level, not the stretcher's backlog), one-way
  latency p50 (which includes it) and the callee's concealed ms.
* ``--virtual``: no network and no clock, so deterministic and not hurt by
  load; a clean path first (what the deeper start costs), then 30 ms jitter:
  one :class:`~pqcall.media.pipeline.ReceiveStream` fed by the real
  encoder with arrival times drawn as the relay draws 30 ms jitter (normal,
  clipped at zero), played on a fake 20 ms clock half a frame out of phase.
  Off and on, each also at raised minimum targets, so the two are compared
  at equal delay: the alignment lag (codec, buffer and stretcher delay) is
  printed beside PESQ-WB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

import numpy as np

from pqcall.bench import media
from pqcall.bench.call import Scenario
from pqcall.bench.quality import REFERENCE_RATE_HZ, align, pesq_wb, resample
from pqcall.bench.speech import Talker, call_pairs, select_speech
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusEncoder, OpusSettings
from pqcall.media.jitter import JitterBuffer
from pqcall.media.pipeline import ReceiveStream
from pqcall.transport.session import MediaSettings

__all__ = ["main", "simulate"]

VIRTUAL_SEEDS = (40, 41)
MIN_TARGETS_MS = (10, 60, 80)


def simulate(
    talker: Talker,
    *,
    time_stretch: bool,
    jitter_ms: float = 30.0,
    seed: int = 40,
    min_target_delay_ms: float = 10.0,
) -> tuple[float, float, float, int]:
    """One virtual call: (PESQ-WB, alignment lag ms, mean jitter-buffer level ms, concealed)."""
    rng = np.random.default_rng(seed)
    settings = OpusSettings()
    samples = settings.frame_samples
    frame_s = settings.frame_ms / 1000
    speech = resample(talker.speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)
    frames = [speech[i : i + samples] for i in range(0, len(speech) - samples + 1, samples)]
    frames += [np.zeros(samples, np.int16)] * 25  # a tail, so the last words are played
    encoder = OpusEncoder(settings)
    arrivals = sorted(
        (k * frame_s + max(0.0, rng.normal(0.0, jitter_ms / 1000)), k, encoder.encode(frame))
        for k, frame in enumerate(frames)
    )
    stream = ReceiveStream(settings.frame_ms, time_stretch=time_stretch)
    # the stream's own buffer, with a raised floor (the benchmark's one private reach-in)
    stream._buffer = JitterBuffer(
        settings.frame_ms,
        min_target_delay_ms=min_target_delay_ms,
        time_stretch=time_stretch,
    )
    played, levels, next_arrival = [], [], 0
    for tick in range(len(frames) + 10):
        now = (tick + 0.5) * frame_s
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] <= now:
            at, k, payload = arrivals[next_arrival]
            stream.receive(k, k * samples, payload, at)
            next_arrival += 1
        played.append(stream.play(now)[0])
        levels.append(stream.jitter_stats.buffered_delay_ms)
    received = resample(np.concatenate(played), SAMPLE_RATE_HZ, REFERENCE_RATE_HZ)
    aligned, lag = align(received, talker.speech)
    concealed = stream.jitter_stats.concealed
    lag_ms = 1000 * lag / REFERENCE_RATE_HZ
    return pesq_wb(talker.speech, aligned), lag_ms, float(np.mean(levels)), concealed


def _virtual(talkers: Sequence[Talker]) -> None:
    for time_stretch in (False, True):  # a clean path first: what the deeper start costs
        runs = [simulate(t, time_stretch=time_stretch, jitter_ms=0.0) for t in talkers]
        print(
            f"time stretch {'on ' if time_stretch else 'off'}  no jitter:"
            f"  PESQ-WB mean {statistics.fmean(r[0] for r in runs):.2f}"
            f" worst {min(r[0] for r in runs):.2f}"
            f"  buffer {statistics.fmean(r[2] for r in runs):.0f} ms",
            flush=True,
        )
    for time_stretch in (False, True):
        for floor in MIN_TARGETS_MS:
            runs = [
                simulate(t, time_stretch=time_stretch, seed=s, min_target_delay_ms=floor)
                for t in talkers
                for s in VIRTUAL_SEEDS
            ]
            print(
                f"time stretch {'on ' if time_stretch else 'off'}  min target {floor:3d} ms:"
                f"  PESQ-WB mean {statistics.fmean(r[0] for r in runs):.2f}"
                f" worst run {min(r[0] for r in runs):.2f}"
                f"  lag {statistics.fmean(r[1] for r in runs):.0f} ms"
                f"  buffer {statistics.fmean(r[2] for r in runs):.0f} ms"
                f"  concealed {statistics.fmean(r[3] for r in runs):.1f} frames",
                flush=True,
            )


def _calls(talkers: Sequence[Talker]) -> None:
    jobs: list[media.Job] = []
    for repeat in range(media.REPEATS):
        impairment = media.repeat_seed(media.JITTER, repeat)
        for caller, reply in call_pairs(talkers):
            for name, settings in (
                ("off", MediaSettings()),
                ("on", MediaSettings(time_stretch=True)),
            ):
                scenario = Scenario(name, impairment, caller.seconds, settings)
                jobs.append(("pqcall", scenario, caller, reply))
    print(f"{len(jobs)} calls in real time...", file=sys.stderr, flush=True)
    records = media._run_all(jobs)
    rows: dict[str, list[tuple[str, media.ScoredCall]]] = {}
    for (_, scenario, caller, _), record in zip(jobs, records, strict=True):
        rows.setdefault(scenario.name, []).append(
            (caller.name, media._score(record, caller.speech))
        )
    for name, calls in rows.items():
        voices: dict[str, list[float]] = {}
        for voice, scored in calls:
            voices.setdefault(voice, []).append(scored.pesq)
        print(
            f"time stretch {name:3s}  worst run {min(c.pesq for _, c in calls):.2f}"
            f"  worst voice {min(statistics.fmean(v) for v in voices.values()):.2f}"
            f"  mean {statistics.fmean(c.pesq for _, c in calls):.2f}"
            f"  buffer {statistics.fmean(c.buffer_ms for _, c in calls):.0f} ms"
            f"  latency p50 {statistics.fmean(c.latency_p50_ms for _, c in calls):.0f} ms"
            f"  callee concealed"
            f" {statistics.fmean(c.record.concealed_ms[1] for _, c in calls):.0f} ms"
        )
        for voice, c in calls:
            print(
                f"    {voice:18s} {c.pesq:.2f}  buffer {c.buffer_ms:.0f} ms"
                f"  p50 {c.latency_p50_ms:.0f} ms  concealed {c.record.concealed_ms[1]:.0f} ms"
            )


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pqcall.bench.stretch_calls")
    parser.add_argument("--virtual", action="store_true", help="virtual time, no network")
    parser.add_argument("--voices", type=int, default=0, help="corpus voices (0: the quick two)")
    args = parser.parse_args(argv)
    talkers = select_speech(True, quick=not args.voices)
    if args.voices:
        talkers = talkers[: args.voices]
    if args.virtual:
        _virtual(talkers)
    else:
        _calls(talkers)
    return 0


if __name__ == "__main__":  # spawned workers import this module: run only as a script
    sys.exit(main())
