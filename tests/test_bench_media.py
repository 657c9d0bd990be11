"""The media benchmark runs end to end and reports sane figures (no timing asserts)."""

import contextlib
import io
import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest

from pqcall.bench import media, speech
from pqcall.bench.baseline import PlaybackTimeline
from pqcall.bench.corpus import CORPUS_DIR_ENV
from pqcall.bench.quality import PESQ_WB_MAX, PESQ_WB_MIN, SAMPLES_DIR, align, load_reference
from pqcall.cli import main

QUICK_CONDITIONS = ("no loss", "10% random loss")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "media.json"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:  # the corpus, if espeak-ng is here, not in ~/.cache
        patch.setenv(CORPUS_DIR_ENV, str(tmp_path_factory.mktemp("corpus")))
        with contextlib.redirect_stdout(printed):
            assert main(["bench", "media", "--quick", "--json", str(out)]) == 0
    figures = {figure["name"]: figure for figure in json.loads(out.read_text())}
    return figures | {"stdout": printed.getvalue()}


def test_quick_run_prints_what_a_user_hears_per_condition(quick_run):
    table = quick_run["stdout"].split("What a user hears")[1]
    for column in (
        "worst voice",
        "worst run",
        "concealed ms caller",
        "concealed ms callee",
        "caller enc % clean/fec/redundancy/backup",
        "late caller/callee",
    ):
        assert column in table
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert set(QUICK_CONDITIONS) <= set(rows)
    # the clean path: no loss, so the encoder is clean once the first report is in
    shares = rows["no loss"].split()[-2]
    assert int(shares.split("/")[0]) > 50
    for condition in QUICK_CONDITIONS:
        worst = quick_run[f"PESQ-WB, {condition}, worst run"]
        assert worst["value"] <= quick_run[f"PESQ-WB, {condition}, worst voice"]["value"]


def test_cpu_hog_runs_beside_the_calls_and_is_stopped(capsys):
    before = set(_children())
    assert main(["bench", "media", "--quick", "--no-corpus", "--cpu-hog", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 CPU hog(s) ('while True: pass') ran beside the calls and were stopped" in out
    assert "load average 1/5/15 min:" in out
    assert "caller enc % clean/fec/redundancy/backup" in out
    assert set(_children()) <= before  # the hog is gone


def _children() -> list[int]:
    """This process's child processes (Linux), to see that no hog is left behind."""
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    try:
        with open(path) as file:
            return [int(pid) for pid in file.read().split()]
    except OSError:
        return []


def test_quick_run_has_every_figure_of_each_condition(quick_run):
    for condition in QUICK_CONDITIONS:
        for metric in (
            "PESQ-WB",
            "wire bitrate",
            "jitter-buffer delay",
            "latency p50",
            "latency p95",
            "CPU per call side",
        ):
            assert f"{metric}, {condition}" in quick_run


def test_quick_run_reports_the_worst_voice_of_each_condition(quick_run):
    for condition in QUICK_CONDITIONS:
        worst = quick_run[f"PESQ-WB, {condition}, worst voice"]
        mean = quick_run[f"PESQ-WB, {condition}"]
        assert worst["value"] <= mean["value"]
        assert worst["baseline"] <= mean["baseline"]
        voices = [name for name in quick_run if name.startswith(f"PESQ-WB, {condition}, voice ")]
        assert min(quick_run[name]["value"] for name in voices) == worst["value"]


def test_samples_make_one_call_and_corpus_voices_answer_each_other():
    alice, bob = speech.select_speech(False)
    assert speech.call_pairs([alice, bob]) == [(alice, bob)]
    one, two, three = (replace(alice, name=name, is_sample=False) for name in "abc")
    assert speech.call_pairs([one, two, three]) == [(one, two), (two, three), (three, one)]


def test_quick_run_scores_are_pesq_scores(quick_run):
    for condition in QUICK_CONDITIONS:
        figure = quick_run[f"PESQ-WB, {condition}"]
        assert PESQ_WB_MIN <= figure["value"] <= PESQ_WB_MAX
        assert PESQ_WB_MIN <= figure["baseline"] <= PESQ_WB_MAX


def test_quick_run_pipeline_works_end_to_end(quick_run):
    # speech got through pqcall's whole pipeline when nothing was lost
    assert quick_run["PESQ-WB, no loss"]["value"] > 3.0


def test_quick_run_rates_and_latencies_are_positive(quick_run):
    for condition in QUICK_CONDITIONS:
        for metric in ("wire bitrate", "latency p50", "latency p95", "CPU per call side"):
            figure = quick_run[f"{metric}, {condition}"]
            assert figure["value"] > 0 and math.isfinite(figure["value"])
            assert figure["baseline"] > 0 and math.isfinite(figure["baseline"])


def test_align_finds_the_offset():
    reference = load_reference(SAMPLES_DIR / "alice.wav", 2.0)
    received = np.concatenate([np.zeros(1234, np.int16), reference[:-500]])
    aligned, lag = align(received, reference)
    assert lag == 1234
    assert len(aligned) == len(reference)
    assert np.array_equal(aligned[:-1734], reference[:-1734])
    assert not aligned[-500:].any()  # padded where the received audio ended


def test_prototype_device_plays_frames_back_to_back_and_gaps_as_silence():
    device = PlaybackTimeline(rate_hz=1000, buffer_ms=10)
    frame = np.ones(64, np.int16)
    assert device.play(frame, 0.0) == pytest.approx(0.010)  # idle: after its buffer
    assert device.play(frame, 0.070) == pytest.approx(0.074)  # queued behind the first
    assert device.play(frame, 0.300) == pytest.approx(0.310)  # ran dry: a gap of silence
    heard = device.render()
    assert heard[10:138].all() and not heard[138:310].any() and heard[310:374].all()


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(
            [(1.5, 20.0), (2.5, 20.0), (3.5, 80.0), (4.5, 40.0), (5.5, 20.0)], 2.5, id="settles"
        ),
        pytest.param([(1.5, 20.0), (3.5, 60.0), (5.5, 60.0)], None, id="never"),
        pytest.param([(1.5, 20.0), (3.5, 20.0), (4.5, 20.0)], 0.0, id="never-rose"),
    ],
)
def test_settle_time(samples, expected):
    assert media.settle_s(samples, calm_s=3.0, stop_s=3.0) == expected


def test_bottleneck_figures_from_the_backlog_and_bitrate_series():
    from pqcall.bench import media_bottleneck as mb

    onset, widened = mb.WIDE_S, mb.WIDE_S + mb.NARROW_S
    # over 100 ms until 2.4 s after the onset, then under for good
    queue = [(onset + t / 10, 200.0 if t < 25 else 10.0) for t in range(int(mb.NARROW_S * 10))]
    assert mb.under_goal_s(queue) == pytest.approx(2.4)
    # never under: the whole span
    assert mb.under_goal_s([(onset, 0.0), (widened - 0.1, 150.0)]) == pytest.approx(
        mb.NARROW_S - 0.1
    )
    # the bitrate: full again 1.5 s after the link widens; or not by the end
    rates = [(0.0, 39.6), (onset + 1, 12.0), (widened + 1.4, 12.0), (widened + 1.5, 39.6)]
    assert mb.full_rate_again_s(rates) == pytest.approx(1.5)
    assert math.isnan(mb.full_rate_again_s([(0.0, 39.6), (widened + 5, 12.0)]))
    scenario = mb.bottleneck_scenario(32)
    assert scenario.impairment.rate_kbps == 32 and scenario.impaired_between_s == (onset, widened)


def test_bottleneck_applies_only_to_the_media_benchmark(capsys):
    assert main(["bench", "codec", "--bottleneck", "32"]) != 0
