"""The quality-per-wire-bit curve: wire rates as a call sends them, a sane curve, a PNG."""

import itertools
import json
import struct
from dataclasses import replace

import pytest

from pqcall.bench.curve import CONTROL_WIRE_BPS, measure, plot, wire_bps
from pqcall.bench.speech import select_speech
from pqcall.cli import main
from pqcall.media.codec import DEFAULT_BITRATE_BPS, DEFAULT_FRAME_MS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def test_wire_rate_at_the_defaults_is_what_a_call_sends():
    # docs/protocol.md: 154-156 bytes a datagram at 50/s plus one control datagram a second
    assert wire_bps(DEFAULT_FRAME_MS, DEFAULT_BITRATE_BPS) == pytest.approx(63_200)


def test_longer_frames_halve_the_header_overhead():
    def overhead(frame_ms: int) -> float:
        return wire_bps(frame_ms, 32_000) - 32_000 - CONTROL_WIRE_BPS

    assert overhead(20) == pytest.approx(2 * overhead(40))
    assert overhead(20) == pytest.approx(3 * overhead(60))
    assert wire_bps(20, 24_000) < wire_bps(20, 32_000) < wire_bps(10, 32_000)


def test_curve_rises_with_bitrate_at_each_frame_size():
    (alice, _) = select_speech(False)
    talker = replace(alice, speech=alice.speech[: 4 * 16_000])
    points = measure([talker], frames_ms=(20, 40), bitrates_bps=(12_000, 24_000, 39_600))
    assert [(p.frame_ms, p.bitrate_bps) for p in points] == [
        (f, b) for f in (20, 40) for b in (12_000, 24_000, 39_600)
    ]
    for frame_ms in (20, 40):
        line = [p for p in points if p.frame_ms == frame_ms]
        scores = [p.worst for p in line]
        assert all(1.0 <= score <= 4.65 for score in scores)
        # more bits never much worse, and the range is wide enough to tell apart
        assert all(b >= a - 0.1 for a, b in itertools.pairwise(scores)), scores
        assert scores[-1] > scores[0] + 0.5, scores
        assert [p.wire_bps for p in line] == sorted(p.wire_bps for p in line)
    by_grid = {(p.frame_ms, p.bitrate_bps): p for p in points}
    assert by_grid[40, 24_000].wire_bps < by_grid[20, 24_000].wire_bps


def test_plot_writes_a_png(tmp_path):
    (alice, _) = select_speech(False)
    talker = replace(alice, speech=alice.speech[: 3 * 16_000])
    points = measure([talker], frames_ms=(20,), bitrates_bps=(16_000, DEFAULT_BITRATE_BPS))
    path = plot(points, tmp_path / "sub" / "curve.png")
    width, height = png_size(path.read_bytes())
    assert width > 500 and height > 300


def test_bench_curve_quick_prints_table_and_writes_png_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "curve.json"
    assert main(["bench", "curve", "--quick", "--no-corpus", "--json", str(out)]) == 0
    png_size((tmp_path / "pqcall-curve.png").read_bytes())
    figures = {f["name"]: f for f in json.loads(out.read_text())}
    default = figures["PESQ-WB worst voice, 20 ms at 39.6 kbit/s"]
    assert default["value"] == default["baseline"]  # the default is the baseline
    assert figures["wire bit rate, 20 ms at 39.6 kbit/s"]["value"] == pytest.approx(63.2)
    assert figures["wire bit rate, 40 ms at 39.6 kbit/s"]["value"] < 63.2
    printed = capsys.readouterr().out
    assert "PESQ-WB against wire bit rate" in printed
    assert "within 48 kbit/s on the wire" in printed
