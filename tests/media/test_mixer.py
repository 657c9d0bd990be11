"""The group mix's limiter (media/mixer.py): transparent below full scale, never clips, releases."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from pqcall.media.audio import ToneSource
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusEncoder, OpusSettings, Pcm
from pqcall.media.mixer import CEILING, INT16_MAX, Mixer, mix
from pqcall.media.pipeline import MediaPipeline

FRAME = 960  # 20 ms at 48 kHz


def voices(count: int, frames: int, amplitude: float, seed: int = 1) -> list[list[Pcm]]:
    """``count`` loud voices: tones at unrelated pitches with a syllable-like envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME) / SAMPLE_RATE_HZ
    out = []
    for k in range(count):
        pitch = 110.0 + 37.0 * k + rng.uniform(0, 20)
        envelope = 0.6 + 0.4 * np.abs(np.sin(2 * math.pi * (3.0 + k * 0.7) * t + k))
        wave = amplitude * envelope * np.sin(2 * math.pi * pitch * t + rng.uniform(0, 6))
        pcm = np.rint(wave).astype(np.int16)
        out.append([pcm[i * FRAME : (i + 1) * FRAME] for i in range(frames)])
    return out


def play(mixer: Mixer, streams: list[list[Pcm]]) -> Pcm:
    return np.concatenate([mixer.mix([s[i] for s in streams]) for i in range(len(streams[0]))])


def plain_sum(streams: list[list[Pcm]]) -> npt.NDArray[np.int64]:
    summed: npt.NDArray[np.int64] = np.sum(
        [np.concatenate(s).astype(np.int64) for s in streams], axis=0
    )
    return summed


def test_transparent_bit_exact_while_the_sum_stays_within_full_scale():
    rng = np.random.default_rng(7)
    mixer = Mixer()
    for _ in range(200):
        frames = [rng.integers(-4_000, 4_001, FRAME).astype(np.int16) for _ in range(8)]
        for frame in frames:  # sample 0 sums to full scale exactly, sample 1 to -32768
            frame[0], frame[1] = 4_096, -4_096
        frames[7][0] = 4_095
        out = mixer.mix(frames)
        assert out.dtype == np.int16
        assert np.array_equal(out, np.sum(np.stack(frames).astype(np.int32), axis=0))
    assert mixer.gain == 1.0 and mixer.limited_frames == 0


def test_eight_loud_voices_never_reach_full_scale():
    streams = voices(8, 100, 12_000)  # each -8.7 dBFS; their sum reaches ~+8 dBFS
    assert np.max(np.abs(plain_sum(streams))) > 2 * INT16_MAX  # a plain sum would clip a lot
    out = play(Mixer(), streams).astype(np.int32)
    assert np.count_nonzero(np.abs(out) >= INT16_MAX) == 0
    assert np.max(np.abs(out)) <= math.ceil(CEILING)
    assert np.max(np.abs(out)) > CEILING * 0.9  # limited, not just turned down


def test_no_step_in_the_gain_at_a_peak():
    # silence, then a loud chord starting mid-frame: the attack ramps the gain down ahead of it
    streams = voices(4, 3, 16_000)
    for s in streams:
        s[1][: FRAME // 2] = 0
        s[0][:] = 0
    out = play(Mixer(), streams).astype(np.float64)
    total = plain_sum(streams).astype(np.float64)
    loud = np.abs(total) > 1_000
    gains = out[loud] / total[loud]
    assert np.max(np.abs(out)) <= math.ceil(CEILING)
    # consecutive loud samples' gains never jump by more than a few percent
    assert np.max(np.abs(np.diff(gains))) < 0.1


def test_release_gives_back_the_gain_after_the_loud_part():
    loud = voices(8, 50, 12_000)  # one second of everybody at once
    quiet = voices(1, 50, 3_000, seed=3)[0]  # then one voice, alone
    silent = [np.zeros(FRAME, np.int16)] * 50
    streams = [loud[0] + quiet] + [s + silent for s in loud[1:]]
    mixer = Mixer()
    out = play(mixer, streams).astype(np.float64)
    assert mixer.limited_frames >= 40
    total = plain_sum(streams).astype(np.float64)
    after = 50 * FRAME + round(0.3 * SAMPLE_RATE_HZ)  # 300 ms after the loud part ends
    reduction_db = 20 * math.log10(
        math.sqrt(np.mean(total[after:] ** 2)) / math.sqrt(np.mean(out[after:] ** 2))
    )
    assert reduction_db < 0.1, f"{reduction_db:.2f} dB still held 300 ms after"
    assert mixer.gain > 10 ** (-0.1 / 20)
    # and it was really reducing during the loud part
    during = slice(10 * FRAME, 50 * FRAME)
    assert np.max(np.abs(out[during])) < 0.6 * np.max(np.abs(total[during]))


def test_stateless_mix_never_clips():
    loud = np.full(4, 30_000, np.int16)
    assert np.max(np.abs(mix([loud, loud]).astype(np.int32))) < INT16_MAX
    assert mix([loud, -loud]).tolist() == [0] * 4


def test_pipeline_group_playout_is_limited():
    # three loud encoded tones through real decoders and jitter buffers, mixed by the pipeline
    pipeline = MediaPipeline(OpusSettings())
    streams: list[tuple[object, list[bytes]]] = []
    for k, hz in enumerate((300, 450, 700)):
        source, encoder = ToneSource(hz, amplitude=0.9), OpusEncoder()
        frames = [encoder.encode(source.read_frame()) for _ in range(30)]
        stream: object = 0 if k == 0 else f"s{k}"
        if k:
            pipeline.add_stream(stream)
        streams.append((stream, frames))
    played = []
    for i in range(30):
        now = i * 0.020
        for stream, frames in streams:
            pipeline.receive(i, i * FRAME, frames[i], now, stream=stream)
        played.append(pipeline.play(now))
    out = np.concatenate(played).astype(np.int32)
    assert np.max(np.abs(out)) > 20_000  # the tones are heard
    assert np.count_nonzero(np.abs(out) >= INT16_MAX) == 0
