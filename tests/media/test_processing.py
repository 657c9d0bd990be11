"""The send side's processing stage (media/processing.py): echo removed, any frame size, degrade."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest

from pqcall.bench.audio_scenes import Room, echo_scene
from pqcall.exceptions import LocalProtocolError
from pqcall.media import processing as processing_module
from pqcall.media.codec import samples_per_frame
from pqcall.media.processing import ProcessingOptions, WebRtcProcessing, create_processing

pytest.importorskip("pywebrtc_audio")

ECHO_ONLY = ProcessingOptions(noise_suppression=False, auto_gain=False)


def _run(stage: WebRtcProcessing, mic: np.ndarray, far: np.ndarray, frame_ms: int) -> np.ndarray:
    """The session's order per tick: capture processed, then the played frame observed."""
    frame = samples_per_frame(frame_ms)
    out = []
    for first in range(0, len(mic) - frame + 1, frame):
        out.append(stage.process_capture(mic[first : first + frame]))
        stage.observe_playout(far[first : first + frame])
    return np.concatenate(out).astype(np.float64)


def _int16(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.round(signal), -32_768, 32_767).astype(np.int16)


@pytest.mark.parametrize("frame_ms", [10, 20, 60])
def test_echo_is_removed_at_every_frame_size(frame_ms: int) -> None:
    scene = echo_scene(8.0, (Room(), Room()), double_talk_s=(7.5, 7.5), change_s=8.0)
    out = _run(WebRtcProcessing(ECHO_ONLY), _int16(scene.mic), _int16(scene.far), frame_ms)
    span = slice(4 * 48_000, 7 * 48_000)  # after convergence
    erle_db = 10 * np.log10(np.mean(scene.echo[span] ** 2) / np.mean(out[span] ** 2))
    assert erle_db >= 20


def test_without_cancellation_the_echo_stays() -> None:
    scene = echo_scene(4.0, (Room(), Room()), double_talk_s=(3.5, 3.5), change_s=4.0)
    stage = WebRtcProcessing(ProcessingOptions(echo_cancel=False, auto_gain=False))
    out = _run(stage, _int16(scene.mic), _int16(scene.far), 20)
    span = slice(2 * 48_000, 3 * 48_000)
    erle_db = 10 * np.log10(np.mean(scene.echo[span] ** 2) / np.mean(out[span] ** 2))
    assert abs(erle_db) < 3
    assert stage.report().erle_db is None


def test_report_estimates_erle_and_says_echo_cancelled() -> None:
    scene = echo_scene(6.0, (Room(), Room()), double_talk_s=(5.5, 5.5), change_s=6.0)
    stage = WebRtcProcessing(ProcessingOptions(), stream_delay_ms=80)
    _run(stage, _int16(scene.mic), _int16(scene.far), 20)
    report = stage.report()
    assert report.echo_cancelled
    assert report.erle_db is not None and report.erle_db >= 15
    assert report.stream_delay_ms == 80
    fields = report.as_dict()
    assert fields["echo_cancelled"] is True
    assert fields["processing_auto_gain"] is True
    stage.reset()  # a new output device: the estimate starts over
    assert stage.report().erle_db is None


def test_frames_must_be_whole_10ms_blocks() -> None:
    stage = WebRtcProcessing(ECHO_ONLY)
    with pytest.raises(LocalProtocolError, match="10 ms"):
        stage.process_capture(np.zeros(500, dtype=np.int16))


def test_the_reference_queue_is_bounded() -> None:
    stage = WebRtcProcessing(ECHO_ONLY)
    for _ in range(100):  # the capture stalled while playout went on
        stage.observe_playout(np.full(960, 1000, dtype=np.int16))
    out = stage.process_capture(np.zeros(960, dtype=np.int16))
    assert len(out) == 960 and out.dtype == np.int16


def test_stream_delay_is_clamped() -> None:
    stage = WebRtcProcessing(ECHO_ONLY)
    stage.set_stream_delay_ms(-5)
    assert stage.stream_delay_ms == 0
    stage.set_stream_delay_ms(10_000)
    assert stage.stream_delay_ms == processing_module.MAX_STREAM_DELAY_MS


def test_nothing_on_means_no_stage() -> None:
    off = ProcessingOptions(
        echo_cancel=False, noise_suppression=False, auto_gain=False, high_pass=False
    )
    assert create_processing(off) is None


def test_a_missing_binding_turns_processing_off_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = importlib.import_module

    def no_binding(name: str, package: str | None = None) -> object:
        if name == "pywebrtc_audio":
            raise ImportError("No module named 'pywebrtc_audio'")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_binding)
    monkeypatch.setattr(processing_module, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="pqcall.media.processing"):
        assert create_processing(ProcessingOptions()) is None
        assert create_processing(ProcessingOptions()) is None
    assert len([r for r in caplog.records if "audio processing off" in r.message]) == 1
