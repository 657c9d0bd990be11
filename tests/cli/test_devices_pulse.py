"""``pqcall audio-devices`` lists PulseAudio's sinks and sources as ``pulse:NAME``, live (issue 16).

Needs the virtual sound card of ``scripts/virtual-soundcard.sh`` and
``PQCALL_TEST_PULSE=1`` (as ``tests/media/test_devices_pulse.py``)::

    eval "$(bash scripts/virtual-soundcard.sh)"
    PQCALL_TEST_PULSE=1 .venv/bin/pytest tests/cli/test_devices_pulse.py
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.cli.helpers import COMMAND_TIMEOUT_S, child_env, pqcall_command

pytestmark = pytest.mark.skipif(
    os.environ.get("PQCALL_TEST_PULSE") != "1",
    reason="needs PulseAudio: run scripts/virtual-soundcard.sh and set PQCALL_TEST_PULSE=1",
)


def devices(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        pqcall_command(None, "audio-devices", *args),
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def listed() -> dict[str, dict[str, Any]]:
    """``pqcall audio-devices --json`` by spec."""
    entries = json.loads(devices("--json").stdout)
    assert isinstance(entries, list)
    return {entry["spec"]: entry for entry in entries}


def pactl(*args: str) -> str:
    return subprocess.run(
        ["pactl", *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def test_pulse_sinks_and_sources_are_listed_live() -> None:
    before = listed()
    # the virtual card: PulseAudio's defaults are the null sink and its monitor
    assert before["pulse:vsink"]["is_default_output"] is True
    assert before["pulse:vsink"]["output_channels"] == 1
    assert before["pulse:vsink.monitor"]["is_default_input"] is True
    assert before["pulse:vsink.monitor"]["input_channels"] == 1
    assert any(entry["index"] is not None for entry in before.values())  # PortAudio's, first
    name = f"pqcall_cli_headset_{os.getpid()}"
    module = pactl(
        "load-module", "module-null-sink", f"sink_name={name}", "rate=16000", "channels=2"
    ).strip()
    try:
        plugged = listed()
        headset = plugged[f"pulse:{name}"]
        assert headset == {
            "spec": f"pulse:{name}",
            "index": None,
            "name": name,
            "host_api": "PulseAudio",
            "input_channels": 0,
            "output_channels": 2,
            "default_samplerate_hz": 16000.0,
            "is_default_input": False,
            "is_default_output": False,
        }
        assert plugged[f"pulse:{name}.monitor"]["input_channels"] == 2
        table = devices().stdout
        assert f"pulse:{name}.monitor" in table and f"pulse:{name} " in table
    finally:
        pactl("unload-module", module)
    assert f"pulse:{name}" not in listed()  # unplugged: gone


def test_without_a_pulse_server_only_portaudio_is_listed() -> None:
    env = {**child_env(), "PULSE_SERVER": "unix:/nonexistent/pqcall-test/native"}
    entries = json.loads(devices("--json", env=env).stdout)
    assert [entry for entry in entries if entry["index"] is None] == []
