"""A speech corpus for tests and benchmarks: ten voices in four languages, made with espeak-ng.

Contract: :func:`build_corpus` synthesises each of :data:`VOICES` (male and
female, low and high pitch; English, German, French, Spanish; text written for
pqcall, several sentences of 8-10 s per voice) with Debian's ``espeak-ng``,
resamples it from espeak's 22.05 kHz to 48 kHz with soxr, sets its active
speech level to :data:`TARGET_LEVEL_DBOV` (:func:`active_level_dbov`, ITU-T
P.56 method B) and writes 48 kHz mono 16-bit WAV files and ``manifest.json``
(voice, language, sex, pitch class, text, SHA-256 of each file) into the cache
directory: ``$PQCALL_CORPUS_DIR``, else ``~/.cache/pqcall/corpus``. The same
recipe (texts, voices, espeak parameters, espeak-ng version) gives the same
bytes; a built corpus is found again by its recipe's hash and returned as it is.
Nothing is downloaded. Why these voices: ``docs/decisions/0200-speech-corpus.md``.

Raises :class:`CorpusUnavailable` (one line) when ``espeak-ng`` is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr  # type: ignore[import-untyped]

from pqcall.exceptions import PqcallError

__all__ = [
    "CORPUS_DIR_ENV",
    "RATE_HZ",
    "TARGET_LEVEL_DBOV",
    "VOICES",
    "Corpus",
    "CorpusUnavailable",
    "Utterance",
    "Voice",
    "active_level_dbov",
    "build_corpus",
    "corpus_dir",
]

CORPUS_DIR_ENV: Final = "PQCALL_CORPUS_DIR"
"""Environment variable naming the cache directory."""
RATE_HZ: Final = 48_000
"""The corpus's sample rate (pqcall's media rate)."""
ESPEAK_RATE_HZ: Final = 22_050
"""What espeak-ng writes."""
TARGET_LEVEL_DBOV: Final = -26.0
"""Active speech level of every file (ITU-T P.56), dB relative to a full-scale square wave."""
FORMAT_VERSION: Final = 1
"""Bumped whenever the way files are made changes (part of the recipe's hash)."""
INSTALL_HINT: Final = "the speech corpus needs espeak-ng: apt-get install espeak-ng"

# ITU-T P.56 method B constants
P56_TIME_CONSTANT_S: Final = 0.03
P56_HANGOVER_S: Final = 0.2
P56_MARGIN_DB: Final = 15.9
P56_BLOCK_S: Final = 0.001
"""The envelope is run on 1 ms blocks of rectified signal (P.56 runs it per sample)."""

Samples = npt.NDArray[np.int16]


class CorpusUnavailable(PqcallError):
    """The corpus cannot be built here (espeak-ng missing or failing)."""


@dataclass(frozen=True, slots=True)
class Voice:
    """One corpus voice: who speaks, and the espeak-ng recipe that makes them."""

    name: str
    """Short unique name, e.g. ``"en-us-male-low"``."""
    language: str
    """BCP 47 tag of the text's language."""
    sex: str
    """``"male"`` or ``"female"``."""
    pitch_class: str
    """``"low"`` or ``"high"``, relative to others of the same sex."""
    espeak_voice: str
    """espeak-ng ``-v`` argument: language and variant."""
    pitch: int
    """espeak-ng ``-p`` (0-99)."""
    speed_wpm: int
    """espeak-ng ``-s`` (words per minute)."""
    text: str
    """What is said: several sentences, 8-10 s."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """One built corpus file and what was measured on it."""

    voice: Voice
    """Its recipe."""
    path: Path
    """48 kHz mono 16-bit WAV file."""
    sha256: str
    """Hex SHA-256 of the file's bytes."""
    seconds: float
    """Length."""
    level_dbov: float
    """Active speech level after normalisation (P.56)."""
    f0_hz: float
    """Median fundamental frequency over voiced 40 ms frames (autocorrelation)."""

    def samples(self, rate_hz: int = RATE_HZ) -> Samples:
        """The file's samples, at ``rate_hz`` (soxr, high quality)."""
        pcm = read_wav(self.path)
        if rate_hz == RATE_HZ:
            return pcm
        out: Samples = soxr.resample(pcm, RATE_HZ, rate_hz)
        return out


@dataclass(frozen=True, slots=True)
class Corpus:
    """A built corpus: its files, in :data:`VOICES` order."""

    directory: Path
    """Where the files and ``manifest.json`` are."""
    espeak_version: str
    """espeak-ng's ``--version`` line."""
    utterances: tuple[Utterance, ...]
    """One per voice."""

    def utterance(self, name: str) -> Utterance:
        """The utterance of the voice called ``name``.

        Raises:
            KeyError: no such voice.
        """
        for utterance in self.utterances:
            if utterance.voice.name == name:
                return utterance
        raise KeyError(name)


_EN_A: Final = (
    "Judge Fox quickly wrapped six bright jewels in a velvet bag. "
    "Would you measure the azure thread before noon? "
    "Oh, the youngest choir sang through the chilly harbour with joy."
)
_EN_B: Final = (
    "Thin shadows crept over the marsh while the pilot checked his gauges. "
    "Give me a cup of hot cocoa, please! "
    "Every zebra at the zoo wore a shiny yellow badge on Thursday."
)
_DE_A: Final = (
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Deich. "
    "Ich möchte heute früh ein Stück Käsekuchen mit Sahne bestellen. "
    "Wo liegt eigentlich der nächste Bahnhof?"
)
_DE_B: Final = (
    "Der Zug nach München fährt pünktlich um acht Uhr ab. "
    "Bitte schließen Sie die Tür, es zieht hier gewaltig! "
    "Fünf grüne Vögel singen leise im alten Wald."
)
_FR_A: Final = (
    "Le vieux juge blond fume un cigare près du quai. "
    "Voulez-vous goûter ce gâteau au chocolat avant minuit ? "
    "Les enfants jouent joyeusement dans la cour de l'école."
)
_FR_B: Final = (
    "Mon frère achète du pain frais chaque matin à la boulangerie. "
    "Il fait très chaud aujourd'hui, ouvrons donc les fenêtres ! "
    "Huit zèbres gris dorment sous un grand chêne."
)
_ES_A: Final = (
    "Mañana temprano viajaremos en tren hasta la ciudad de Zaragoza. "
    "¿Has visto las llaves del coche rojo? "
    "El perro ladra fuerte cuando llueve en el jardín."
)
_ES_B: Final = (
    "Juan bebe jugo de naranja y come queso fresco con pan. "
    "¡Qué frío hace esta noche en la montaña! "
    "Los niños dibujan gatos, peces y estrellas amarillas."
)

VOICES: Final = (
    Voice("en-us-male-low", "en-US", "male", "low", "en-us+m3", 25, 165, _EN_A),
    Voice("en-us-female-high", "en-US", "female", "high", "en-us+f2", 75, 165, _EN_B),
    Voice("en-gb-female-low", "en-GB", "female", "low", "en+f4", 45, 165, _EN_A),
    Voice("en-gb-male-high", "en-GB", "male", "high", "en+m1", 80, 165, _EN_B),
    Voice("de-male-low", "de-DE", "male", "low", "de+m2", 25, 165, _DE_A),
    Voice("de-female-high", "de-DE", "female", "high", "de+f3", 70, 160, _DE_B),
    Voice("fr-female-low", "fr-FR", "female", "low", "fr+f5", 40, 150, _FR_A),
    Voice("fr-male-high", "fr-FR", "male", "high", "fr+m7", 75, 150, _FR_B),
    Voice("es-male-low", "es-ES", "male", "low", "es+m4", 25, 165, _ES_A),
    Voice("es-female-high", "es-ES", "female", "high", "es+f1", 80, 165, _ES_B),
)
"""The corpus's voices, in the order benchmarks use them."""


def corpus_dir() -> Path:
    """The cache directory: ``$PQCALL_CORPUS_DIR``, else ``~/.cache/pqcall/corpus``."""
    configured = os.environ.get(CORPUS_DIR_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "pqcall" / "corpus"


def espeak_version() -> str:
    """espeak-ng's version line.

    Raises:
        CorpusUnavailable: espeak-ng is not installed or does not run.
    """
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise CorpusUnavailable(INSTALL_HINT)
    try:
        done = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise CorpusUnavailable(f"espeak-ng does not run ({error}); {INSTALL_HINT}") from None
    return done.stdout.split("Data at:")[0].strip()


def build_corpus(directory: Path | None = None) -> Corpus:
    """The corpus in ``directory`` (default :func:`corpus_dir`), built first if needed.

    Files live in a subdirectory named by the recipe's hash, so a changed text,
    voice or espeak-ng version builds anew beside the old one. A build is
    written to a temporary directory and renamed into place, so concurrent
    callers never see half a corpus.

    Raises:
        CorpusUnavailable: espeak-ng is missing or fails.
    """
    version = espeak_version()
    recipe = {
        "format": FORMAT_VERSION,
        "espeak_ng": version,
        "rate_hz": RATE_HZ,
        "target_level_dbov": TARGET_LEVEL_DBOV,
        "voices": [asdict(voice) for voice in VOICES],
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    root = directory if directory is not None else corpus_dir()
    target = root / digest
    if not (target / "manifest.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            _write_corpus(scratch, recipe)
            try:
                scratch.rename(target)
            except OSError:  # another process finished first: use its copy
                if not (target / "manifest.json").exists():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return _load(target, version)


def _write_corpus(directory: Path, recipe: dict[str, object]) -> None:
    entries = []
    for voice in VOICES:
        raw = _synthesise(voice, directory)
        pcm = _normalise(soxr.resample(raw.astype(np.float32), ESPEAK_RATE_HZ, RATE_HZ))
        path = directory / f"{voice.name}.wav"
        _write_wav(path, pcm)
        entries.append(
            asdict(voice)
            | {
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "seconds": round(len(pcm) / RATE_HZ, 3),
                "level_dbov": round(active_level_dbov(pcm, RATE_HZ), 2),
                "f0_hz": round(median_f0_hz(pcm, RATE_HZ), 1),
            }
        )
    manifest = {key: recipe[key] for key in ("format", "espeak_ng", "rate_hz")}
    manifest |= {"target_level_dbov": TARGET_LEVEL_DBOV, "voices": entries}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))


def _synthesise(voice: Voice, directory: Path) -> Samples:
    """espeak-ng's 22.05 kHz output for ``voice`` (text on stdin, UTF-8)."""
    out = directory / f"{voice.name}.espeak.wav"
    command = ["espeak-ng", "-b", "1", "-v", voice.espeak_voice]
    command += ["-p", str(voice.pitch), "-s", str(voice.speed_wpm), "-w", str(out), "--stdin"]
    try:
        subprocess.run(command, input=voice.text.encode(), capture_output=True, check=True)
    except subprocess.CalledProcessError as error:
        message = error.stderr.decode(errors="replace").strip().splitlines()
        raise CorpusUnavailable(
            f"espeak-ng failed on voice {voice.espeak_voice}: {message[-1] if message else ''}"
        ) from None
    samples = read_wav(out, ESPEAK_RATE_HZ)
    out.unlink()
    return samples


def _normalise(pcm: npt.NDArray[np.float32]) -> Samples:
    """``pcm`` scaled to :data:`TARGET_LEVEL_DBOV` active level, rounded to 16 bits."""
    scaled = np.asarray(pcm, dtype=np.float64)
    for _ in range(3):  # the level of the rounded result, within a hundredth of a dB
        out = np.clip(np.round(scaled), -32768, 32767).astype(np.int16)
        error_db = active_level_dbov(out, RATE_HZ) - TARGET_LEVEL_DBOV
        if abs(error_db) < 0.01:
            break
        scaled = scaled * 10 ** (-error_db / 20)
    return out


def active_level_dbov(samples: Samples, rate_hz: int) -> float:
    """Active speech level (ITU-T P.56 method B) in dBov; ``-inf`` for silence.

    The envelope (two first-order smoothers of the rectified signal, 30 ms)
    runs on 1 ms block means instead of every sample; activity for each
    threshold 2**-15 .. 1 holds for 200 ms after the envelope last reached it;
    the level is the active mean power where it exceeds the threshold by
    15.9 dB, interpolated between thresholds.
    """
    x = samples.astype(np.float64) / 32768.0
    block = max(1, round(P56_BLOCK_S * rate_hz))
    count = len(x) // block
    if count == 0 or not np.any(x):
        return float("-inf")
    blocks = x[: count * block].reshape(count, block)
    energy = (blocks**2).sum(axis=1)
    gain = float(np.exp(-P56_BLOCK_S / P56_TIME_CONSTANT_S))
    first = second = 0.0
    envelope = np.empty(count)
    for index, magnitude in enumerate(np.abs(blocks).mean(axis=1).tolist()):
        first = gain * first + (1 - gain) * magnitude
        second = gain * second + (1 - gain) * first
        envelope[index] = second
    hangover = round(P56_HANGOVER_S / P56_BLOCK_S)
    levels, margins = [], []
    for exponent in range(-15, 1):
        threshold = 2.0**exponent
        above = np.concatenate([[0], np.cumsum(envelope >= threshold)])
        active = above[1:] - above[np.maximum(0, np.arange(count) - hangover)] > 0
        if not active.any():
            break
        level = 10 * np.log10(energy[active].sum() / (active.sum() * block))
        levels.append(float(level))
        margins.append(float(level - 20 * np.log10(threshold)))
    for j in range(1, len(margins)):
        if margins[j] <= P56_MARGIN_DB:
            share = (margins[j - 1] - P56_MARGIN_DB) / (margins[j - 1] - margins[j])
            return levels[j - 1] + share * (levels[j] - levels[j - 1])
    return levels[-1]


def median_f0_hz(samples: Samples, rate_hz: int) -> float:
    """Median F0 of voiced 40 ms frames (normalised autocorrelation, 60-400 Hz, at 16 kHz)."""
    x = soxr.resample(samples.astype(np.float64), rate_hz, 16_000)
    size, hop = 640, 160
    lags = np.arange(16_000 // 400, 16_000 // 60 + 1)
    frames = [x[i : i + size] for i in range(0, len(x) - size, hop)]
    loud = max(float(np.sqrt(np.mean(frame**2))) for frame in frames) / 10  # -20 dB
    estimates = []
    for frame in frames:
        if np.sqrt(np.mean(frame**2)) < loud:
            continue
        frame = frame - frame.mean()
        correlation = np.correlate(frame, frame, "full")[size - 1 :]
        normalised = correlation[lags] / correlation[0]
        best = int(np.argmax(normalised))
        if normalised[best] > 0.5:
            estimates.append(16_000 / lags[best])
    return float(np.median(estimates)) if estimates else float("nan")


def read_wav(path: Path, rate_hz: int = RATE_HZ) -> Samples:
    """A mono 16-bit WAV file's samples.

    Raises:
        ValueError: the file is not ``rate_hz`` mono 16-bit PCM.
    """
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (rate_hz, 1, 2):
            raise ValueError(f"{path} is not {rate_hz} Hz mono 16-bit PCM")
        raw = wav.readframes(wav.getnframes())
    return np.frombuffer(raw, "<i2").astype(np.int16)


def _write_wav(path: Path, pcm: Samples) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE_HZ)
        wav.writeframes(pcm.astype("<i2").tobytes())


def _load(directory: Path, version: str) -> Corpus:
    manifest = json.loads((directory / "manifest.json").read_text())
    voices = {voice.name: voice for voice in VOICES}
    utterances = tuple(
        Utterance(
            voice=voices[entry["name"]],
            path=directory / entry["file"],
            sha256=entry["sha256"],
            seconds=entry["seconds"],
            level_dbov=entry["level_dbov"],
            f0_hz=entry["f0_hz"],
        )
        for entry in manifest["voices"]
    )
    return Corpus(directory, version, utterances)
