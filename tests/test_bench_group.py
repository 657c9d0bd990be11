"""``pqcall bench group``'s quality and capacity parts: what listeners hear, the forwarder's rate.

(tests/group/test_bench_group.py checks the older part, the 2-phone call's counters.)
"""

from __future__ import annotations

import asyncio

import numpy as np

from pqcall.bench import group_forwarder, group_quality
from pqcall.bench.group_member import GatedSpeech, Recorder
from pqcall.bench.speech import select_speech


def test_gated_speech_is_silent_until_played_then_plays_once() -> None:
    source = GatedSpeech(960)
    assert not np.any(source.read_frame())
    speech = np.arange(1, 2001, dtype=np.int16)
    source.play(speech)
    played = np.concatenate([source.read_frame() for _ in range(3)])
    assert np.array_equal(played[:2000], speech) and not np.any(played[2000:])
    assert not np.any(source.read_frame())


def test_recorder_keeps_only_what_it_is_told_to() -> None:
    sink = Recorder()
    sink.write_frame(np.ones(960, np.int16))
    sink.is_recording = True
    sink.write_frame(np.full(960, 2, np.int16))
    assert np.array_equal(sink.take(), np.full(960, 2, np.int16))
    assert len(sink.take()) == 0


def test_forwarder_is_measured_against_a_bare_fan_out() -> None:
    group = asyncio.run(group_forwarder.forwarder_capacity(1.0))
    bare = asyncio.run(group_forwarder.bare_capacity(1.0))
    # both saturate a loopback socket at thousands of datagrams a second, on part of a core
    assert group.forwarded_per_s > 2_000 and bare.forwarded_per_s > 2_000, (group, bare)
    assert 0 < group.cpu_share <= 1.5 and 0 < bare.cpu_share <= 1.5, (group, bare)
    # the table's work costs something, but not an order of magnitude
    assert 0.1 < group.per_core / bare.per_core < 2.0, (group, bare)


def test_three_phones_hear_one_talker_and_everyone_at_once() -> None:
    # corpus voices are at -26 dBov (a usual level for speech); the shipped
    # samples peak at -1.4 dBFS and two of them at once do clip the mix (a plain sum)
    heard = group_quality.measure(3, select_speech(use_corpus=True, quick=True))
    summary = str(heard)
    assert len(heard.pesq) == 2 and len(heard.accept_to_audio_s) == 2, summary
    # a listener who heard nothing scores the floor, 1.0; the codec alone gives ~4.2; 4.0-4.35
    # here when nothing was concealed, but under load (10-15 on 2 cores) the jitter buffers
    # conceal up to 480 ms of the 8 s and a listener scored as low as 1.55 (decision 0630)
    assert min(heard.pesq) > 1.3 and heard.codec_pesq > 3.5, summary
    assert heard.lost == [0, 0], summary  # loopback, three streams: nothing lost
    assert heard.talker_sent_per_s > 25, summary  # about 50 (a frame every 20 ms)
    assert 0 < max(heard.accept_to_audio_s) < 60, summary
    assert 0 < heard.one_to_one_accept_to_audio_s < 30 and heard.one_to_one_pesq > 1.5, summary
    # everyone talking: each listener hears speech (well above silence), nothing clipped
    assert min(heard.together_peak_dbfs) > -20, summary
    assert sum(heard.together_clipped) == 0, summary
