"""The speech corpus: its voices, determinism, levels; the codec bench on it."""

import hashlib
import json
import os
import shutil
import wave

import numpy as np
import pytest

from pqcall.bench import speech
from pqcall.bench.corpus import (
    CORPUS_DIR_ENV,
    RATE_HZ,
    TARGET_LEVEL_DBOV,
    CorpusUnavailable,
    active_level_dbov,
    build_corpus,
)
from pqcall.cli import main

HAS_ESPEAK = shutil.which("espeak-ng") is not None


def _need_espeak():
    if HAS_ESPEAK:
        return
    if os.environ.get("CI"):
        pytest.fail("espeak-ng is missing in CI: .ci/run must install it")
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    _need_espeak()
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def corpus(corpus_root):
    return build_corpus(corpus_root)


def test_corpus_has_eight_or_more_voices_in_three_or_more_languages(corpus):
    voices = [u.voice for u in corpus.utterances]
    assert len(voices) >= 8
    assert len({v.language.split("-")[0] for v in voices}) >= 3
    assert len({v.name for v in voices}) == len(voices)
    for sex in ("male", "female"):
        assert {v.pitch_class for v in voices if v.sex == sex} == {"low", "high"}


def test_pitch_classes_hold_on_the_measured_pitch(corpus):
    for sex in ("male", "female"):
        f0 = {
            pitch: [
                u.f0_hz
                for u in corpus.utterances
                if (u.voice.sex, u.voice.pitch_class) == (sex, pitch)
            ]
            for pitch in ("low", "high")
        }
        assert max(f0["low"]) < min(f0["high"])
    female = [u.f0_hz for u in corpus.utterances if u.voice.sex == "female"]
    male = [u.f0_hz for u in corpus.utterances if u.voice.sex == "male"]
    assert np.median(female) > np.median(male)


def test_files_are_48_khz_mono_16_bit_of_8_to_11_seconds(corpus):
    for utterance in corpus.utterances:
        with wave.open(str(utterance.path), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE_HZ, 1, 2)
            assert 8.0 <= wav.getnframes() / RATE_HZ <= 11.0


def test_levels_are_within_1_db_of_target_and_nothing_clips(corpus):
    for utterance in corpus.utterances:
        samples = utterance.samples()
        assert abs(active_level_dbov(samples, RATE_HZ) - TARGET_LEVEL_DBOV) <= 1.0
        assert np.abs(samples.astype(np.int32)).max() < 32767


def test_manifest_names_each_voice_and_the_hash_of_its_file(corpus):
    manifest = json.loads((corpus.directory / "manifest.json").read_text())
    assert manifest["target_level_dbov"] == TARGET_LEVEL_DBOV
    assert manifest["espeak_ng"] == corpus.espeak_version
    for entry, utterance in zip(manifest["voices"], corpus.utterances, strict=True):
        assert {"name", "language", "sex", "pitch_class", "text", "sha256"} <= entry.keys()
        assert entry["sha256"] == hashlib.sha256(utterance.path.read_bytes()).hexdigest()


def test_two_builds_give_the_same_bytes(corpus, tmp_path):
    again = build_corpus(tmp_path)
    assert [u.sha256 for u in again.utterances] == [u.sha256 for u in corpus.utterances]


def test_a_built_corpus_is_reused(corpus, corpus_root):
    before = {u.path: u.path.stat().st_mtime_ns for u in corpus.utterances}
    again = build_corpus(corpus_root)
    assert again.directory == corpus.directory
    assert {u.path: u.path.stat().st_mtime_ns for u in again.utterances} == before


def test_missing_espeak_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CorpusUnavailable) as error:
        build_corpus(tmp_path)
    assert str(error.value) == "the speech corpus needs espeak-ng: apt-get install espeak-ng"


def test_benchmarks_fall_back_to_the_samples_with_a_note(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    talkers = speech.select_speech()
    assert [t.name for t in talkers] == ["alice", "bob"]
    assert "using the two samples instead" in capsys.readouterr().err
    with pytest.raises(CorpusUnavailable):
        speech.select_speech(True)


def test_active_level_of_a_sine():
    t = np.arange(RATE_HZ * 2) / RATE_HZ
    sine = (10_000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    expected = 20 * np.log10(10_000 / 32768 / np.sqrt(2))
    assert active_level_dbov(sine, RATE_HZ) == pytest.approx(expected, abs=0.1)
    half = (sine // 2).astype(np.int16)
    assert active_level_dbov(half, RATE_HZ) == pytest.approx(expected - 6.02, abs=0.1)


def test_codec_bench_quick_on_the_corpus_reports_the_worst_voice(
    corpus, corpus_root, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv(CORPUS_DIR_ENV, str(corpus_root))
    out = tmp_path / "codec.json"
    assert main(["bench", "codec", "--quick", "--corpus", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "worst voice by PESQ-WB: clean path: " in printed
    figures = {f["name"]: f for f in json.loads(out.read_text())}
    for voice in speech.QUICK_VOICES:
        assert f"PESQ-WB, decoded, no loss, clean path, complexity 6, voice {voice}" in figures
        assert voice in printed
    worst = figures["PESQ-WB, decoded, no loss, lossy path, complexity 10, worst voice"]
    mean = figures["PESQ-WB, decoded, no loss, lossy path, complexity 10"]
    assert 1.0 <= worst["value"] <= mean["value"] <= 4.65


def test_corpus_option_is_refused_by_other_benchmarks(capsys):
    assert main(["bench", "crypto", "--quick", "--corpus"]) == 1
    expected = "pqcall: --corpus applies only to the codec and media benchmarks\n"
    assert capsys.readouterr().err == expected
