"""``pqcall bench audio --quick``: the figures are there and the echo canceller works."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("pywebrtc_audio")
pytest.importorskip("pystoi")


def test_quick_audio_bench() -> None:
    from pqcall.bench import audio

    figures = {figure.name: figure for figure in audio.run(quick=True)}
    assert figures["ERLE steady (4-12 s)"].value >= 25
    assert figures["ERLE after double talk (19-22 s)"].value >= 25
    assert abs(figures["bob's level in double talk vs alone"].value) <= 3
    assert figures["convergence from call start"].value <= 2
    assert math.isfinite(figures["convergence after path change"].value)
    assert figures["PESQ-WB babble 5 dB"].value > 1.0
    assert 0 < figures["STOI babble 5 dB"].value <= 1
    assert figures["CPU of the stage (AEC+NS+AGC)"].value > 0
    assert 0 <= figures["latency added (NS)"].value <= 20
    # the second method agrees: NS 7 ms, AEC3's block framing 8 ms more (decision 0300)
    assert figures["latency added, clicks (NS)"].value == pytest.approx(7.0, abs=1.0)
    assert figures["latency added, clicks (AEC+NS)"].value == pytest.approx(15.0, abs=1.0)


def test_audio_is_a_registered_benchmark() -> None:
    from pqcall.bench.__main__ import BENCHMARKS

    assert "audio" in BENCHMARKS
