"""Helpers for the CLI tests: ``pqcall`` in this process (:func:`run`) or as child processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pqcall.cli import main
from tests.harness import scaled

COMMAND_TIMEOUT_S = scaled(60.0)  # one pqcall command, start to exit
PASSPHRASE = "correct horse battery staple"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``pqcall ARGV`` in this process: its exit code, stdout and stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pqcall_command(home: Path | None, *args: str) -> list[str]:
    """``python -m pqcall [--home HOME] ARGS``."""
    prefix = [sys.executable, "-m", "pqcall"]
    return [*prefix, "--home", str(home), *args] if home is not None else [*prefix, *args]


def child_env() -> dict[str, str]:
    """This environment without any ``PQCALL_*``, with ``PQCALL_PASSPHRASE`` set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQCALL_")}
    env["PQCALL_PASSPHRASE"] = PASSPHRASE
    return env


def one_json(stdout: str) -> dict[str, Any]:
    """The one JSON object a ``--json`` command printed."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    record = json.loads(lines[0])
    assert isinstance(record, dict)
    return record


# what issue 5 asks of the JSON of a finished call (also checked by tests/e2e)
CALL_RECORD_FIELDS = (
    "call_id",
    "peer",
    "direction",
    "result",
    "sas",
    "path",
    "duration_s",
    "codec",
    "frame_ms",
    "packets_sent",
    "packets_received",
    "packets_lost",
    "packets_late",
    "packets_rejected",
    "concealed_ms",
    "fec_recovered",
    "jitter_ms",
    "rtt_ms",
    "jitter_buffer_ms",
    "tx_kbps",
    "rx_kbps",
    "mos",
    "first_capture_unix",
    "first_playout_unix",
)
