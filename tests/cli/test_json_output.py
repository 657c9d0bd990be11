"""``--json`` output: rounded floats, ISO-8601 times beside unix times, ``devices`` as one array."""

from __future__ import annotations

import json

import pytest

from pqcall.cli import main
from pqcall.cli.output import round_float, to_json
from pqcall.media import devices


@pytest.mark.parametrize(
    ("value", "rounded"),
    [
        pytest.param(3.2119296738294945, 3.212, id="rtt"),
        pytest.param(91.20921769508536, 91.21, id="r-factor"),
        pytest.param(12345.678, 12345.7, id="large-keeps-a-decimal"),
        pytest.param(0.000123456, 0.0001235, id="small-keeps-its-digits"),
        pytest.param(-2.5, -2.5, id="negative"),
        pytest.param(0.0, 0.0, id="zero"),
    ],
)
def test_floats_are_rounded(value: float, rounded: float) -> None:
    assert round_float(value) == rounded


def test_unix_times_get_an_iso_twin() -> None:
    record = json.loads(to_json({"started_unix": 1796680501.4481766, "ended_unix": None}))
    assert record == {
        "started": "2026-12-07T21:55:01.448Z",
        "started_unix": 1796680501.448,
        "ended_unix": None,
    }
    assert list(record) == ["started", "started_unix", "ended_unix"]


def test_devices_json_is_an_empty_array_without_devices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(devices, "list_devices", lambda: [])
    # no PulseAudio server either (CI runs one: the virtual sound card)
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent/pqcall-test/native")
    assert main(["audio-devices", "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"
