"""``pqcall bench privacy``: does the voice disguise hide who speaks, and are the words kept?

Contract: :func:`run` builds the speech corpus (espeak-ng), cuts each voice's
utterance in two halves (different sentences: the *reference* and the
*clip*), and embeds them with Resemblyzer's speaker encoder (GE2E, its
weights ship inside the ``resemblyzer`` package; nothing is downloaded; the
``[privacy]`` extra installs it with a CPU build of torch). Cosine
similarities to each voice's undisguised reference:

- *same voice*: its own clip, undisguised (genuine trials);
- *other voices*: every other voice's clip (impostor trials);
- *disguised*: its own clip through :class:`~pqcall.media.disguise.VoiceDisguise`
  at each preset (the ratio drawn per voice, as a call would).

The equal-error-rate threshold (:func:`eer_threshold`) comes from the genuine
and impostor trials; the goal (issue 23) is that a disguised clip is no
closer to its reference than another speaker is: accepted at that threshold
no more often than the impostors are. Intelligibility beside it: the 20 ms
energy-envelope correlation with the clean clip
(:func:`~pqcall.media.disguise.envelope_correlation`, goal at least 0.7),
STOI (``pystoi``) of the disguised clip against the clean one (it penalises
the formant shift itself), and PESQ-WB of the disguised clip after Opus
against the disguised clip before it (what the codec does to disguised
speech; the baseline: the clean clip after Opus against itself; PESQ against
the clean voice would only score the changed voice). Linkability: the
disguised reference half (one call's draw) against the disguised clip (another
call's draw) of the same voice, at the same threshold. Cost: the stage's CPU
time against Opus encoding's on the same audio in the same run, and its
fixed delay.

The similarity code (:func:`cosine`, :func:`eer_threshold`) is plain numpy;
only :func:`_encoder` imports the model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import soxr  # type: ignore[import-untyped]

from pqcall.bench.corpus import RATE_HZ, build_corpus
from pqcall.bench.report import Figure
from pqcall.exceptions import PqcallError
from pqcall.media.codec import OpusDecoder, OpusEncoder
from pqcall.media.disguise import (
    LOOKAHEAD_SAMPLES,
    PRESETS,
    VoiceDisguise,
    draw_parameters,
    envelope_correlation,
)

__all__ = ["PresetResult", "cosine", "eer_threshold", "run"]

MODEL_RATE_HZ: Final = 16_000
"""Resemblyzer's, STOI's and PESQ-WB's rate."""
FRAME: Final = RATE_HZ // 50
SEED: Final = 23
"""Seeds the per-voice ratio draws, so a run can be repeated (calls use ``secrets``)."""
INSTALL_HINT: Final = (
    "the privacy benchmark needs the [privacy] extra: pip install 'pqcall[privacy]'"
)

Samples = npt.NDArray[np.int16]


def cosine(a: npt.NDArray[np.floating[Any]], b: npt.NDArray[np.floating[Any]]) -> float:
    """Cosine similarity of two embeddings."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def eer_threshold(genuine: Sequence[float], impostor: Sequence[float]) -> tuple[float, float]:
    """The threshold where false rejects equal false accepts, and that equal error rate.

    Scores at or above the threshold are accepted as the same speaker.
    Candidate thresholds are the observed scores; the one with the smallest
    gap between the two rates wins (their mean is the rate).
    """
    if not genuine or not impostor:
        raise ValueError("need genuine and impostor scores")
    g = np.asarray(genuine, float)
    i = np.asarray(impostor, float)
    best: tuple[float, float, float] | None = None
    for t in np.unique(np.concatenate([g, i])):
        frr = float(np.mean(g < t))
        far = float(np.mean(i >= t))
        gap = abs(frr - far)
        if best is None or gap < best[0]:
            best = (gap, float(t), (frr + far) / 2)
    assert best is not None
    return best[1], best[2]


@dataclass(frozen=True, slots=True)
class PresetResult:
    """One preset over the corpus."""

    preset: str
    similarity: list[float]
    """Per voice: disguised clip to its reference."""
    linked: list[float]
    """Per voice: disguised clip to its disguised reference (two calls, two draws)."""
    accepted: int
    """Voices whose disguised clip is at or above the EER threshold."""
    envelope: list[float]
    stoi: list[float]
    pesq: list[float]
    cpu_share: float
    """The stage's CPU seconds over Opus encoding's, same audio."""


def _disguise(stage: VoiceDisguise, x: Samples) -> tuple[Samples, float]:
    """``x`` through the stage (delay removed), and the CPU seconds it took."""
    padded = np.concatenate([x, np.zeros(LOOKAHEAD_SAMPLES + FRAME, np.int16)])
    usable = len(padded) // FRAME * FRAME
    start = time.process_time()
    out = np.concatenate([stage.process(padded[i : i + FRAME]) for i in range(0, usable, FRAME)])
    cpu = time.process_time() - start
    return out[LOOKAHEAD_SAMPLES : LOOKAHEAD_SAMPLES + len(x)], cpu


def _through_opus(x: Samples) -> tuple[Samples, float]:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    usable = len(x) // FRAME * FRAME
    start = time.process_time()
    packets = [encoder.encode(x[i : i + FRAME]) for i in range(0, usable, FRAME)]
    cpu = time.process_time() - start
    return np.concatenate([decoder.decode(p) for p in packets]), cpu


def _at_model_rate(x: Samples) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = soxr.resample(
        x.astype(np.float64) / 32768, RATE_HZ, MODEL_RATE_HZ
    )
    return out


def _encoder() -> Any:
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise PqcallError(f"{INSTALL_HINT} ({exc})") from None
    model = VoiceEncoder("cpu", verbose=False)

    def embed(x: Samples) -> npt.NDArray[np.float32]:
        wav = preprocess_wav(_at_model_rate(x).astype(np.float32), source_sr=MODEL_RATE_HZ)
        out: npt.NDArray[np.float32] = model.embed_utterance(wav)
        return out

    return embed


def _quality(clean: Samples, disguised: Samples) -> tuple[float, float, float]:
    """Envelope correlation, STOI and PESQ-WB (after Opus) of ``disguised`` against ``clean``."""
    from pystoi import stoi  # type: ignore[import-untyped]

    envelope = envelope_correlation(clean, disguised, delay_samples=0)
    ref = _at_model_rate(clean)
    deg = _at_model_rate(disguised)
    s = float(stoi(ref, deg, MODEL_RATE_HZ, extended=False))
    return envelope, s, _pesq_through_opus(disguised)


def _pesq_through_opus(x: Samples) -> float:
    """PESQ-WB of ``x`` after Opus encoding and decoding, against ``x``."""
    from pesq import pesq  # type: ignore[import-untyped]

    decoded, _ = _through_opus(x)
    ref = _at_model_rate(x)
    n = min(len(ref), len(decoded) * MODEL_RATE_HZ // RATE_HZ)
    return float(pesq(MODEL_RATE_HZ, ref[:n], _at_model_rate(decoded)[:n], "wb"))


def run(*, quick: bool = False) -> list[Figure]:
    """Every figure of the benchmark; prints the per-preset table first."""
    embed = _encoder()
    corpus = build_corpus()
    utterances = corpus.utterances[:4] if quick else corpus.utterances
    names = [u.voice.name for u in utterances]
    halves = []
    for u in utterances:
        x = u.samples()
        mid = len(x) // 2
        halves.append((x[:mid], x[mid:]))
    refs = [embed(ref) for ref, _ in halves]
    clips = [embed(clip) for _, clip in halves]
    genuine = [cosine(refs[v], clips[v]) for v in range(len(names))]
    impostor = [
        cosine(refs[v], clips[w]) for v in range(len(names)) for w in range(len(names)) if v != w
    ]
    threshold, eer = eer_threshold(genuine, impostor)
    accepted_impostors = sum(s >= threshold for s in impostor)
    clean_pesq = []
    opus_cpu = 0.0
    for _, clip in halves:
        opus_cpu += _through_opus(clip)[1]
        clean_pesq.append(_pesq_through_opus(clip))
    rng = random.Random(SEED)
    results = []
    for preset in PRESETS:
        sims, linked, env, stois, pesqs, cpu_total = [], [], [], [], [], 0.0
        for v, (ref, clip) in enumerate(halves):
            disguised, cpu = _disguise(VoiceDisguise(draw_parameters(preset, rng)), clip)
            cpu_total += cpu
            clip_embedding = embed(disguised)
            sims.append(cosine(refs[v], clip_embedding))
            other_call, _ = _disguise(VoiceDisguise(draw_parameters(preset, rng)), ref)
            linked.append(cosine(embed(other_call), clip_embedding))
            e, s, p = _quality(clip, disguised)
            env.append(e)
            stois.append(s)
            pesqs.append(p)
        accepted = sum(s >= threshold for s in sims)
        results.append(
            PresetResult(preset, sims, linked, accepted, env, stois, pesqs, cpu_total / opus_cpu)
        )
    print(_table(names, genuine, impostor, threshold, eer, accepted_impostors, clean_pesq, results))
    figures = [
        Figure("EER threshold (cosine)", threshold, "", "equal error rate", eer),
        Figure(
            "same voice, other clip (mean cosine)",
            float(np.mean(genuine)),
            "",
            "other voices (mean cosine)",
            float(np.mean(impostor)),
        ),
    ]
    for r in results:
        figures += [
            Figure(
                f"{r.preset}: disguised to own reference (mean cosine)",
                float(np.mean(r.similarity)),
                "",
                "other voices (mean cosine)",
                float(np.mean(impostor)),
            ),
            Figure(
                f"{r.preset}: accepted at the EER threshold (share)",
                r.accepted / len(names),
                "",
                "impostors accepted (share)",
                accepted_impostors / len(impostor),
            ),
            Figure(
                f"{r.preset}: two calls linked at the EER threshold (share)",
                sum(s >= threshold for s in r.linked) / len(names),
                "",
                "impostors accepted (share)",
                accepted_impostors / len(impostor),
            ),
            Figure(
                f"{r.preset}: envelope correlation (worst voice)", min(r.envelope), "", "goal", 0.7
            ),
            Figure(f"{r.preset}: STOI (mean)", float(np.mean(r.stoi)), "", "clean", 1.0),
            Figure(
                f"{r.preset}: PESQ-WB, disguised after Opus (mean)",
                float(np.mean(r.pesq)),
                "MOS",
                "clean after Opus",
                float(np.mean(clean_pesq)),
            ),
            Figure(f"{r.preset}: CPU (stage / Opus encode)", r.cpu_share, "", "Opus encode", 1.0),
        ]
    return figures


def _table(
    names: list[str],
    genuine: list[float],
    impostor: list[float],
    threshold: float,
    eer: float,
    accepted_impostors: int,
    clean_pesq: list[float],
    results: list[PresetResult],
) -> str:
    n = len(names)
    lines = [
        "speaker similarity (Resemblyzer, cosine to the voice's undisguised reference),"
        f" {n} voices",
        f"EER threshold {threshold:.3f} (EER {eer:.1%}); impostors accepted"
        f" {accepted_impostors}/{len(impostor)}",
        f"{'voice':22s} {'same':>6s} {'others':>6s}" + "".join(f" {r.preset:>6s}" for r in results),
    ]
    for v, name in enumerate(names):
        others = np.mean([impostor[v * (n - 1) + k] for k in range(n - 1)])
        lines.append(
            f"{name:22s} {genuine[v]:6.3f} {others:6.3f}"
            + "".join(f" {r.similarity[v]:6.3f}" for r in results)
        )
    lines.append("")
    header = ("preset", "accepted", "linked", "env min", "STOI", "PESQ-WB", "CPU/Opus")
    lines.append(f"{header[0]:8s}" + "".join(f" {h:>9s}" for h in header[1:]))
    genuine_accepted = sum(g >= threshold for g in genuine)
    lines.append(
        f"{'off':8s} {f'{genuine_accepted}/{n}':>9s} {'-':>9s} {1.0:9.3f} {1.0:9.3f}"
        f" {np.mean(clean_pesq):9.2f} {0.0:9.2f}"
    )
    for r in results:
        linked = sum(s >= threshold for s in r.linked)
        lines.append(
            f"{r.preset:8s} {f'{r.accepted}/{n}':>9s} {f'{linked}/{n}':>9s}"
            f" {min(r.envelope):9.3f} {np.mean(r.stoi):9.3f} {np.mean(r.pesq):9.2f}"
            f" {r.cpu_share:9.2f}"
        )
    lines.append(f"stage delay {LOOKAHEAD_SAMPLES * 1000 // RATE_HZ} ms (fixed)")
    return "\n".join(lines) + "\n"
