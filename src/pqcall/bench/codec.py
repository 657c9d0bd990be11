"""Codec benchmark: what the Opus encoder costs and gives per voice, capped VBR against CBR.

``python -m pqcall.bench codec [--quick] [--corpus | --no-corpus]`` (or
``pqcall bench codec``) encodes the benchmark's speech, voice by voice
(:mod:`pqcall.bench.speech`: the speech corpus's ten voices, else
``media/samples/alice.wav`` and ``bob.wav``; 48 kHz, 20 ms frames), with
pqcall's default settings, where the bitrate is variable under a hard cap of
the packet (:attr:`OpusSettings.vbr`), and, as the baseline, the same
settings at a constant bitrate, which fills every packet exactly. Two
encoder states, as a call runs them (:mod:`pqcall.transport.media_protocol`):
a clean path (complexity ``CALM_COMPLEXITY``, no FEC) and a lossy one
(complexity 10, in-band FEC planned for 20 % loss). For each: CPU time per
frame (the best of a few passes over the speech, so a warm encoder), Opus
bytes per frame (mean and largest; the padding inside the encryption makes
every packet the size of the cap on the wire either way) and, with the
``pesq`` package, PESQ-WB of the decoded speech with no loss (what the
codec alone costs each voice).

Every figure comes per voice, over all voices (mean; largest for the largest
packet) and for the worst voice (:func:`pqcall.bench.report.voice_figures`);
a table per voice and the worst voice by PESQ-WB are printed first.

Runtime: about 40 s of CPU on the corpus (``--quick``: two voices, one
pass over 5 s of speech each, a few seconds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from pqcall.bench.quality import REFERENCE_RATE_HZ, align, pesq_wb, resample
from pqcall.bench.report import Figure, render_columns, voice_figures, worst_voice
from pqcall.bench.speech import Talker, select_speech
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusDecoder, OpusEncoder, OpusSettings, Pcm
from pqcall.transport.adaptation import CALM_COMPLEXITY, MAX_COMPLEXITY

PASSES: Final = 3
"""Passes over the speech; the fastest counts."""
QUICK_SPEECH_S: Final = 5.0
LOSSY_EXPECTED_LOSS_PERCENT: Final = 20
BASELINE: Final = "constant bitrate, same settings"
PESQ: Final = "PESQ-WB, decoded, no loss"


@dataclass(frozen=True, slots=True)
class Encoded:
    """One voice encoded one way."""

    cpu_s: float
    """Best CPU seconds per frame."""
    sizes: list[int]
    """Opus bytes of each frame."""
    pesq: float | None
    """PESQ-WB of the decoded speech (None without the ``pesq`` package)."""


def _has_pesq() -> bool:
    try:
        import pesq  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def _frames(speech: Pcm) -> list[Pcm]:
    pcm = resample(speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)
    samples = OpusSettings().frame_samples
    return [pcm[i : i + samples] for i in range(0, len(pcm) - samples + 1, samples)]


def _encode(
    settings: OpusSettings, frames: Sequence[Pcm], passes: int
) -> tuple[float, list[bytes]]:
    """Best CPU seconds per frame over ``passes`` fresh encoders, and the packets."""
    best = float("inf")
    packets: list[bytes] = []
    for _ in range(passes):
        encoder = OpusEncoder(settings)
        start = time.process_time()
        packets = [encoder.encode(frame) for frame in frames]
        best = min(best, (time.process_time() - start) / len(frames))
    return best, packets


def _score(packets: Sequence[bytes], reference: Pcm) -> float:
    decoder = OpusDecoder(OpusSettings().frame_ms)
    decoded = np.concatenate([decoder.decode(packet) for packet in packets])
    aligned, _ = align(resample(decoded, SAMPLE_RATE_HZ, REFERENCE_RATE_HZ), reference)
    return pesq_wb(reference, aligned)


def _measure(settings: OpusSettings, talker: Talker, passes: int, scored: bool) -> Encoded:
    cpu_s, packets = _encode(settings, _frames(talker.speech), passes)
    pesq = _score(packets, talker.speech) if scored else None
    return Encoded(cpu_s, [len(packet) for packet in packets], pesq)


STATES: Final = (
    ("clean path", OpusSettings(complexity=CALM_COMPLEXITY)),
    (
        "lossy path",
        OpusSettings(complexity=MAX_COMPLEXITY, expected_loss_percent=LOSSY_EXPECTED_LOSS_PERCENT),
    ),
)
"""(name, encoder settings) of the two states a call's encoder runs in."""

Results = dict[tuple[str, str], tuple[Encoded, Encoded]]
"""(state, voice) -> (pqcall's capped VBR, the CBR baseline)."""


def _figures(results: Results, talkers: Sequence[Talker], scored: bool) -> list[Figure]:
    figures: list[Figure] = []
    for state, settings in STATES:
        label = f"{state}, complexity {settings.complexity}"

        def per_voice(value: str, state: str = state) -> dict[str, tuple[float, float]]:
            return {
                t.name: (
                    _value(results[state, t.name][0], value),
                    _value(results[state, t.name][1], value),
                )
                for t in talkers
            }

        figures += [
            *voice_figures(
                f"encode CPU per frame, {label}",
                "us",
                BASELINE,
                per_voice("cpu_us"),
                higher_is_better=False,
            ),
            *voice_figures(
                f"Opus bytes per frame (mean), {label}",
                "bytes",
                BASELINE,
                per_voice("mean"),
                higher_is_better=False,
            ),
            *voice_figures(
                f"Opus bytes per frame (largest), {label}",
                "bytes",
                BASELINE,
                per_voice("largest"),
                higher_is_better=False,
                overall=max,
            ),
        ]
        if scored:
            figures += voice_figures(
                f"{PESQ}, {label}", "MOS", BASELINE, per_voice("pesq"), higher_is_better=True
            )
    return figures


def _value(encoded: Encoded, value: str) -> float:
    if value == "cpu_us":
        return 1e6 * encoded.cpu_s
    if value == "mean":
        return float(np.mean(encoded.sizes))
    if value == "largest":
        return float(max(encoded.sizes))
    return encoded.pesq if encoded.pesq is not None else float("nan")


def _table(results: Results, talkers: Sequence[Talker], scored: bool) -> str:
    """One row per voice, then the mean and the worst voice; pqcall/CBR in each cell."""
    metrics = ([("pesq", "PESQ-WB", True)] if scored else []) + [
        ("mean", "bytes mean", False),
        ("cpu_us", "CPU us", False),
    ]
    columns = [(state, value, title, up) for state, _ in STATES for value, title, up in metrics]
    header = ["voice", "who", *(f"{state}: {title}" for state, _, title, _ in columns)]
    pairs = {
        t.name: [
            (_value(results[state, t.name][0], value), _value(results[state, t.name][1], value))
            for state, value, _, _ in columns
        ]
        for t in talkers
    }
    rows = [[t.name, t.description, *map(_cell, pairs[t.name])] for t in talkers]
    mean_row, worst_row = ["mean", ""], ["worst voice", ""]
    for index, (_, _, _, up) in enumerate(columns):
        ours = [pairs[t.name][index][0] for t in talkers]
        theirs = [pairs[t.name][index][1] for t in talkers]
        worst = min if up else max
        mean_row.append(_cell((statistics.fmean(ours), statistics.fmean(theirs))))
        worst_row.append(_cell((worst(ours), worst(theirs))))
    rows += [mean_row, worst_row]
    return render_columns("pqcall bench codec: per voice (pqcall capped VBR / CBR)", header, rows)


def _cell(pair: tuple[float, float]) -> str:
    ours, theirs = pair
    fmt = "{:.2f}" if ours < 10 else "{:.1f}"
    return f"{fmt.format(ours)}/{fmt.format(theirs)}"


def run(*, quick: bool = False, corpus: bool | None = None) -> list[Figure]:
    """Encode each voice both ways in both states; print per voice; figures with CBR as baseline.

    Raises:
        CorpusUnavailable: ``corpus`` is True and the corpus cannot be built.
    """
    talkers = select_speech(corpus, quick=quick)
    if quick:
        limit = round(QUICK_SPEECH_S * REFERENCE_RATE_HZ)
        talkers = tuple(replace(t, speech=t.speech[:limit]) for t in talkers)
    passes = 1 if quick else PASSES
    scored = _has_pesq()
    results: Results = {}
    for state, settings in STATES:
        for talker in talkers:
            results[state, talker.name] = (
                _measure(settings, talker, passes, scored),
                _measure(replace(settings, vbr=False), talker, passes, scored),
            )
    print(_table(results, talkers, scored))
    if scored:
        worst = {
            state: worst_voice(
                {t.name: _value(results[state, t.name][0], "pesq") for t in talkers},
                higher_is_better=True,
            )
            for state, _ in STATES
        }
        print(
            "worst voice by PESQ-WB: "
            + "; ".join(
                f"{state}: {name} ({_value(results[state, name][0], 'pesq'):.2f})"
                for state, name in worst.items()
            )
        )
    else:
        print("note: no PESQ-WB (the pesq package is missing: pip install pesq)")
    print()
    return _figures(results, talkers, scored)
