"""Which speech a benchmark plays: the corpus's voices, or the two shipped samples.

Contract: :func:`select_speech` returns the talkers a benchmark scores, each
with its speech at 16 kHz (what PESQ wideband scores). With ``use_corpus``
None (the default of ``--corpus``) it takes the corpus
(:mod:`pqcall.bench.corpus`) when it can be built and otherwise falls back to
``media/samples/alice.wav`` and ``bob.wav``, printing one line that says so;
True insists on the corpus, False takes the samples. ``quick`` keeps
:data:`QUICK_VOICES` of the corpus. :func:`call_pairs` says who answers whom
in a benchmark call.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pqcall.bench.corpus import CorpusUnavailable, build_corpus
from pqcall.bench.quality import REFERENCE_RATE_HZ, SAMPLES_DIR, Samples, load_reference

__all__ = ["QUICK_VOICES", "SAMPLE_TALKERS", "Talker", "call_pairs", "select_speech"]

QUICK_VOICES: Final = ("en-us-male-low", "de-female-high")
"""The corpus voices of ``--quick``: the lowest and one of the highest pitches."""
SAMPLE_TALKERS: Final = (
    ("alice", "alice.wav", "en-US female (espeak-ng en-us+f3)"),
    ("bob", "bob.wav", "en-GB male (espeak-ng en-gb)"),
)
"""(name, file, description) of the shipped samples."""


@dataclass(frozen=True, slots=True)
class Talker:
    """One voice a benchmark plays."""

    name: str
    """Short name, used in figure names (e.g. ``"de-male-low"``)."""
    description: str
    """Language, sex, pitch: a table cell."""
    speech: Samples
    """The speech at 16 kHz."""
    is_sample: bool = False
    """One of the shipped samples, not a corpus voice."""

    @property
    def seconds(self) -> float:
        """Length of the speech."""
        return len(self.speech) / REFERENCE_RATE_HZ


def select_speech(use_corpus: bool | None = None, *, quick: bool = False) -> tuple[Talker, ...]:
    """The talkers to benchmark (see the module docstring).

    Raises:
        CorpusUnavailable: ``use_corpus`` is True and the corpus cannot be built.
    """
    if use_corpus is False:
        return _samples()
    try:
        corpus = build_corpus()
    except CorpusUnavailable as error:
        if use_corpus:
            raise
        print(f"note: {error}; using the two samples instead", file=sys.stderr, flush=True)
        return _samples()
    utterances = [u for u in corpus.utterances if not quick or u.voice.name in QUICK_VOICES]
    return tuple(
        Talker(
            u.voice.name,
            f"{u.voice.language} {u.voice.sex} {u.voice.pitch_class}, {u.f0_hz:.0f} Hz",
            u.samples(REFERENCE_RATE_HZ),
        )
        for u in utterances
    )


def _samples() -> tuple[Talker, ...]:
    return tuple(
        Talker(name, description, load_reference(SAMPLES_DIR / file), is_sample=True)
        for name, file, description in SAMPLE_TALKERS
    )


def call_pairs(talkers: Sequence[Talker]) -> list[tuple[Talker, Talker]]:
    """(caller's voice, callee's voice) of each benchmark call.

    Corpus voices each call once, answered by the next voice (the last by the
    first); the samples make one pair, alice answered by bob, as before the corpus.
    """
    if all(talker.is_sample for talker in talkers):
        return [(talkers[0], talkers[-1])]
    return [(talker, talkers[(i + 1) % len(talkers)]) for i, talker in enumerate(talkers)]
