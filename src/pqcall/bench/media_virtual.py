"""The media benchmark in virtual time: deterministic calls, not bent by the machine's load.

``python -m pqcall.bench.media_virtual [--voices N] [--repeats R] [--conditions A,B]
[--bottleneck KBPS,...] [--no-corpus]``

Each call is two real :class:`~pqcall.transport.media_engine.MediaEngine` objects (Opus,
SFrame, adaptation, jitter buffer, FEC and concealment), each direction a
:class:`~pqcall.netem.ImpairedLink` (the relay's sans-I/O core), on a virtual clock: the
caller ticks every frame from 0, the callee half a frame later (the bench's clock phase),
and a datagram is delivered :data:`WIRE_S` after the link releases it. No sockets, no
scheduler: two runs give the same figures, whatever else the machine does, so a change can
be measured before and after on a busy machine. What it does not measure: scheduling
jitter, CPU, the pump (``bench media`` does, in real time).

Printed per condition of :data:`pqcall.bench.media.CONDITIONS` (each with
:data:`~pqcall.bench.media.REPEATS` seeds, as the real bench draws them): PESQ-WB of what
the callee heard, per voice (mean over the seeds), the worst voice, the worst run; the
callee's concealed ms over the call and in its first :data:`START_S` (start-up), and its
mean jitter-buffer level after the first second.

``--bottleneck``: :mod:`pqcall.bench.media_bottleneck`'s scenario (wide, then a bounded
drop-tail queue at the rate for its narrow span, then wide), the first voice looped:
the backlog over time, PESQ-WB after adapting, the Opus bitrate, the jitter buffer.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np

from pqcall.bench import media_bottleneck as bottleneck
from pqcall.bench.call import PcmSource, call_keys
from pqcall.bench.media import CONDITIONS, REPEATS, repeat_seed
from pqcall.bench.quality import REFERENCE_RATE_HZ, Samples, align, pesq_wb, resample
from pqcall.bench.speech import Talker, call_pairs, select_speech
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm
from pqcall.netem import ImpairedLink, Impairment
from pqcall.transport.media_engine import MediaEngine, MediaSettings

__all__ = ["START_S", "WIRE_S", "VirtualCall", "VirtualRecord", "main", "run_virtual"]

WIRE_S: Final = 0.005
"""Propagation after the impairment, each way."""
TAIL_S: Final = 1.0
"""The call runs this long after the speech (the buffer's last frames play)."""
START_S: Final = 2.0
"""The start-up span whose concealment is counted apart."""
SAMPLE_S: Final = 0.1
"""Timeline sampling interval."""
CALLER, CALLEE = "a", "b"


@dataclass(slots=True)
class VirtualRecord:
    """What one virtual call measured (the callee's side unless named otherwise)."""

    heard: Samples
    """What the callee played, 16 kHz."""
    concealed_ms: float
    """Concealed audio over the call."""
    start_concealed_ms: float
    """Of which in the first :data:`START_S`."""
    buffer_ms: list[tuple[float, float]] = field(default_factory=list)
    """(s, the callee's jitter-buffer level ms)."""
    target_ms: list[tuple[float, float]] = field(default_factory=list)
    """(s, the callee's jitter-buffer target ms)."""
    queue_ms: list[tuple[float, float]] = field(default_factory=list)
    """(s, the caller-to-callee bottleneck backlog ms)."""
    opus_kbps: list[tuple[float, float]] = field(default_factory=list)
    """(s, the caller's Opus bitrate, kbit/s)."""
    playout: dict[str, int | float] = field(default_factory=dict)
    """The callee's jitter-buffer counters at the end."""

    def mean_buffer_ms(self, after_s: float = 1.0) -> float:
        """The callee's mean jitter-buffer level from ``after_s`` on."""
        values = [ms for t, ms in self.buffer_ms if t >= after_s]
        return statistics.fmean(values) if values else 0.0


class VirtualCall:
    """Caller and callee engines over two impaired links, on a virtual clock.

    Args:
        speech: the caller's audio, 48 kHz.
        reply: the callee's audio, 48 kHz.
        settings: both sides' media settings (default: the product's).
        phase_frames: the callee's clock, in frames after the caller's.
    """

    def __init__(
        self,
        speech: Pcm,
        reply: Pcm,
        settings: MediaSettings | None = None,
        *,
        phase_frames: float = 0.5,
    ) -> None:
        settings = settings or MediaSettings()
        frame_ms = settings.opus.frame_ms
        self.frame_s = frame_ms / 1000
        keys = call_keys()
        self.now = 0.0
        self.engines = {
            name: MediaEngine(key, settings) for name, key in zip("ab", keys, strict=True)
        }
        self.sources = {CALLER: PcmSource(speech, frame_ms), CALLEE: PcmSource(reply, frame_ms)}
        self.links = {  # links[x]: the direction into x
            CALLEE: ImpairedLink(Impairment(), random.Random(1)),
            CALLER: ImpairedLink(Impairment(), random.Random(2)),
        }
        self.next_tick = {CALLER: 0.0, CALLEE: phase_frames * self.frame_s}
        self.heard: list[Pcm] = []
        self.record = VirtualRecord(np.zeros(0, np.int16), 0.0, 0.0)
        self._next_sample = 0.0
        for engine in self.engines.values():
            engine.start(0.0)
        self._flush()

    def set_link(self, impairment: Impairment) -> None:
        """Both directions from now on (the reverse with the next seed)."""
        self.links[CALLEE].reconfigure(impairment, random.Random(impairment.seed))
        reverse = replace(impairment, seed=impairment.seed + 1)
        self.links[CALLER].reconfigure(reverse, random.Random(reverse.seed))

    def run(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, delivering, timing and ticking in order."""
        end = self.now + seconds
        while True:
            due = list(self.next_tick.values())
            due += [t for e in self.engines.values() if (t := e.get_timer()) is not None]
            due += [t + WIRE_S for link in self.links.values() if (t := link.get_timer())]
            now = max(self.now, min(due))
            if now > end:
                self.now = end
                return
            self.now = now
            for name, link in self.links.items():
                while (t := link.get_timer()) is not None and t + WIRE_S <= now:
                    for datagram in link.datagrams_to_send(t):
                        self.engines[name].receive_datagram(datagram, now)
            for name, engine in self.engines.items():
                timer = engine.get_timer()
                if timer is not None and timer <= now:
                    engine.handle_timer(now)
                if self.next_tick[name] <= now:
                    played = engine.tick(self.sources[name].read_frame(), now)
                    self.next_tick[name] += self.frame_s
                    if name == CALLEE:
                        self.heard.append(np.array(played, np.int16))
                        self._sample(now)
            self._flush()

    def finish(self) -> VirtualRecord:
        """The record of the call so far."""
        record = self.record
        pcm = np.concatenate(self.heard) if self.heard else np.zeros(0, np.int16)
        record.heard = resample(pcm, SAMPLE_RATE_HZ, REFERENCE_RATE_HZ)
        callee = self.engines[CALLEE].snapshot(self.now)
        record.concealed_ms = callee.concealed_ms
        record.playout = dict(self.engines[CALLEE].jitter_stats.as_dict())
        return record

    def _sample(self, now: float) -> None:
        record = self.record
        if now < START_S:
            record.start_concealed_ms = self.engines[CALLEE].snapshot(now).concealed_ms
        if now < self._next_sample:
            return
        self._next_sample += SAMPLE_S
        callee = self.engines[CALLEE].snapshot(now)
        caller = self.engines[CALLER]
        record.buffer_ms.append((now, callee.jitter_buffer_ms))
        record.target_ms.append((now, callee.jitter_buffer_target_ms))
        record.queue_ms.append((now, self.links[CALLEE].stats.queue_delay_ms))
        record.opus_kbps.append(
            (now, caller.adaptation.bitrate_bps(round(1000 * self.frame_s)) / 1e3)
        )

    def _flush(self) -> None:
        for name, other in ((CALLER, CALLEE), (CALLEE, CALLER)):
            engine = self.engines[name]
            for datagram in engine.datagrams_to_send(self.now):
                self.links[other].receive_datagram(datagram, self.now)
            while engine.next_event() is not None:
                pass


def run_virtual(
    impairment: Impairment,
    speech: Samples,
    reply: Samples,
    *,
    settings: MediaSettings | None = None,
    impaired_between_s: tuple[float, float] | None = None,
) -> VirtualRecord:
    """One virtual call of ``speech`` (16 kHz) answered by ``reply``, through ``impairment``.

    ``impaired_between_s``: the impairment only between these times (else the whole call).
    """
    seconds = len(speech) / REFERENCE_RATE_HZ
    call = VirtualCall(
        resample(speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ),
        resample(reply[: len(speech)], REFERENCE_RATE_HZ, SAMPLE_RATE_HZ),
        settings,
    )
    if impaired_between_s is None:
        call.set_link(impairment)
        call.run(seconds + TAIL_S)
        return call.finish()
    on, off = impaired_between_s
    call.run(on)
    call.set_link(impairment)
    call.run(off - on)
    call.set_link(Impairment(seed=impairment.seed + 2))
    call.run(seconds + TAIL_S - off)
    return call.finish()


@dataclass(frozen=True, slots=True)
class Scored:
    """One call's figures."""

    voice: str
    pesq: float
    concealed_ms: float
    start_concealed_ms: float
    buffer_ms: float


def _score(voice: str, record: VirtualRecord, reference: Samples) -> Scored:
    aligned, _ = align(record.heard, reference)
    return Scored(
        voice,
        pesq_wb(reference, aligned),
        record.concealed_ms,
        record.start_concealed_ms,
        record.mean_buffer_ms(),
    )


def run_conditions(
    talkers: Sequence[Talker],
    conditions: Sequence[tuple[str, Impairment]],
    repeats: int,
    settings: MediaSettings | None = None,
) -> dict[str, list[Scored]]:
    """Every condition's calls: each voice, answered by the next, ``repeats`` seeds."""
    results: dict[str, list[Scored]] = {}
    for name, impairment in conditions:
        scored = results.setdefault(name, [])
        for repeat in range(repeats):
            for caller, reply in call_pairs(talkers):
                record = run_virtual(
                    repeat_seed(impairment, repeat), caller.speech, reply.speech, settings=settings
                )
                scored.append(_score(caller.name, record, caller.speech))
        _print_condition(name, scored)
    return results


def _print_condition(name: str, scored: Sequence[Scored]) -> None:
    voices: dict[str, list[Scored]] = {}
    for call in scored:
        voices.setdefault(call.voice, []).append(call)
    per_voice = {v: statistics.fmean(c.pesq for c in calls) for v, calls in voices.items()}
    worst_voice = min(per_voice, key=per_voice.__getitem__)
    worst_run = min(scored, key=lambda c: c.pesq)
    print(
        f"{name}: PESQ-WB mean {statistics.fmean(per_voice.values()):.2f}"
        f"  worst voice {per_voice[worst_voice]:.2f} ({worst_voice})"
        f"  worst run {worst_run.pesq:.2f} ({worst_run.voice})"
    )
    print(
        f"  concealed ms: mean {statistics.fmean(c.concealed_ms for c in scored):.0f}"
        f" max {max(c.concealed_ms for c in scored):.0f};"
        f" first {START_S:g} s: mean {statistics.fmean(c.start_concealed_ms for c in scored):.0f}"
        f" max {max(c.start_concealed_ms for c in scored):.0f};"
        f"  buffer {statistics.fmean(c.buffer_ms for c in scored):.0f} ms"
    )
    print(
        "  "
        + "  ".join(
            f"{v} {p:.2f}/{max(c.start_concealed_ms for c in voices[v]):.0f}"
            for v, p in per_voice.items()
        ),
        flush=True,
    )


def run_bottleneck(kbps: float, talker: Talker, reply: Talker) -> VirtualRecord:
    """:mod:`~pqcall.bench.media_bottleneck`'s scenario at ``kbps``, in virtual time."""
    seconds = bottleneck.WIDE_S + bottleneck.NARROW_S + bottleneck.AFTER_S
    scenario = bottleneck.bottleneck_scenario(kbps)
    return run_virtual(
        scenario.impairment,
        _looped(talker.speech, seconds),
        _looped(reply.speech, seconds),
        impaired_between_s=scenario.impaired_between_s,
    )


def _looped(speech: Samples, seconds: float) -> Samples:
    return np.resize(speech, round(seconds * REFERENCE_RATE_HZ))


def bottleneck_figures(record: VirtualRecord, speech: Samples) -> dict[str, float]:
    """The bottleneck bench's figures of one virtual call (``speech``: the looped caller's)."""
    wide, narrow = bottleneck.WIDE_S, bottleneck.NARROW_S
    start = round((wide + bottleneck.ADAPTED_AFTER_S) * REFERENCE_RATE_HZ)
    stop = round((wide + narrow) * REFERENCE_RATE_HZ)
    aligned, _ = align(record.heard, speech[start:stop])
    after = [
        (t, ms)
        for t, ms in record.buffer_ms
        if wide + bottleneck.ADAPTED_AFTER_S <= t < wide + narrow
    ]
    adapted = wide + bottleneck.ADAPTED_AFTER_S
    return {
        "under 100 ms after s": bottleneck.under_goal_s(record.queue_ms),
        "mean backlog ms": statistics.fmean(
            ms for t, ms in record.queue_ms if adapted <= t < wide + narrow
        ),
        "PESQ-WB after adapting": pesq_wb(speech[start:stop], aligned),
        "Opus kbit/s after adapting": statistics.fmean(
            k for t, k in record.opus_kbps if adapted <= t < wide + narrow
        ),
        "full rate again s": bottleneck.full_rate_again_s(record.opus_kbps),
        "jitter buffer ms after adapting": statistics.fmean(ms for _, ms in after),
        "concealed": float(record.playout.get("concealed", 0)),
        "skipped": float(record.playout.get("skipped", 0)),
        "shrink_dropped": float(record.playout.get("shrink_dropped", 0)),
    }


def _print_bottleneck(kbps: float, record: VirtualRecord, speech: Samples) -> None:
    figures = bottleneck_figures(record, speech)
    print(f"bottleneck {kbps:g} kbit/s (virtual time):")
    print("  " + "  ".join(f"{name} {value:.2f}" for name, value in figures.items()))
    print("    s  backlog ms  Opus kbit/s  jb ms  target ms")
    seconds = bottleneck.WIDE_S + bottleneck.NARROW_S + bottleneck.AFTER_S
    for second in range(round(seconds)):

        def at(series: Sequence[tuple[float, float]], s: int = second) -> float:
            values = [v for t, v in series if s <= t < s + 1]
            return max(values) if values else float("nan")

        print(
            f"  {second:3d}  {at(record.queue_ms):10.0f}  {at(record.opus_kbps):11.1f}"
            f"  {at(record.buffer_ms):5.0f}  {at(record.target_ms):9.0f}"
        )
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the virtual benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pqcall.bench.media_virtual")
    parser.add_argument("--voices", type=int, default=0, help="corpus voices (0: all)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="seeds per condition")
    parser.add_argument(
        "--conditions", default="", help="comma-separated substrings of condition names"
    )
    parser.add_argument("--bottleneck", default="", help="comma-separated kbit/s (only those)")
    parser.add_argument("--no-corpus", action="store_true", help="the two samples")
    args = parser.parse_args(argv)
    talkers = select_speech(False if args.no_corpus else True)
    if args.voices:
        talkers = talkers[: args.voices]
    if args.bottleneck:
        for kbps in (float(k) for k in args.bottleneck.split(",")):
            seconds = bottleneck.WIDE_S + bottleneck.NARROW_S + bottleneck.AFTER_S
            reply = talkers[1 % len(talkers)]
            record = run_bottleneck(kbps, talkers[0], reply)
            _print_bottleneck(kbps, record, _looped(talkers[0].speech, seconds))
        return 0
    wanted = [w.strip() for w in args.conditions.split(",") if w.strip()]
    conditions = [c for c in CONDITIONS if not wanted or any(w in c[0] for w in wanted)]
    run_conditions(talkers, conditions, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
