"""The README's walkthrough runs as written: each shell block marked ``<!-- readme-test -->``.

A marked block is run with ``bash -e`` from the top of the checkout, with
``pqcall`` on ``PATH`` (this virtualenv's), ``HOME`` a temporary folder (the
server's data lands there), and two substitutions only: a free port for
``5001`` (through ``$PQCALL_README_PORT``) and a temporary folder for ``/tmp/``.
The "One machine, two accounts" block must complete its call and leave two
heard WAV files with sound in them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.harness import scaled
from tests.server.test_runner import _free_port

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
MARKER = "<!-- readme-test -->"
BLOCK_PATTERN = re.compile(
    re.escape(MARKER) + r"\s*\n```(?:sh|bash|console)?\n(.*?)\n```", re.DOTALL
)
BLOCK_TIMEOUT_S = scaled(180.0)
MIN_RMS = 200.0  # of int16 samples: clearly more than silence (speech is ~2000)

pytestmark = pytest.mark.slow


def marked_blocks(text: str) -> list[str]:
    """The shell code blocks of ``text`` that follow the marker comment."""
    return BLOCK_PATTERN.findall(text)


def rms(path: Path) -> float:
    with wave.open(str(path), "rb") as heard:
        samples = np.frombuffer(heard.readframes(heard.getnframes()), dtype=np.int16)
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def test_marked_blocks_are_found() -> None:
    blocks = marked_blocks(README.read_text(encoding="utf-8"))
    assert any("pqcall server" in block and "call bob" in block for block in blocks)


def test_two_accounts_block_runs(tmp_path: Path) -> None:
    block = next(b for b in marked_blocks(README.read_text(encoding="utf-8")) if "call bob" in b)
    script = block.replace("5001", "${PQCALL_README_PORT}").replace("/tmp/", f"{tmp_path}/")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQCALL_")}
    env |= {
        "HOME": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PQCALL_README_PORT": str(_free_port()),
    }
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        process = subprocess.Popen(
            ["bash", "-e", "-c", script],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout_file,
            stderr=stderr_file,
            start_new_session=True,  # its background jobs are killed with it
        )
        try:
            process.wait(timeout=BLOCK_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever a failed block left running
            process.wait()
    stdout, stderr = out.read_text(), err.read_text()
    assert process.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    calls = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [(c["peer"], c["result"]) for c in calls] == [("bob", "ended")], stdout
    assert calls[0]["duration_s"] >= 9, stdout
    assert "access" not in stderr and "WebSocket" not in stderr, stderr  # a quiet server
    for name in ("alice-heard.wav", "bob-heard.wav"):
        heard = tmp_path / name
        assert heard.is_file(), name
        assert rms(heard) > MIN_RMS, name
