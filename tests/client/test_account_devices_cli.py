"""`pqcall register` shows the recovery words once; `devices`, `rotate-key`, `unlink`, `recover`.

In-process CLI against a real in-process server (SQLite); real crypto.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from pqcall.cli import main
from pqcall.client.home import Home
from pqcall.crypto.recovery import normalize_words
from tests.server.conftest import RunningServer

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PQCALL_HOME", "PQCALL_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASSPHRASE)


def _words(out: str) -> str:
    found = re.findall(r"\b\d{1,2}\. ([a-z]+)", out)
    assert len(found) == 24, out
    return " ".join(found)


def test_register_devices_rotate_unlink_recover(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    laptop = str(tmp_path / "laptop")
    assert main(["--home", laptop, "register", "bob", "--server", server.base_url]) == 0
    out = capsys.readouterr().out
    assert "recovery words" in out
    words = normalize_words(_words(out))  # 24 words with a valid checksum
    # shown once: registering again shows none
    assert main(["--home", laptop, "register", "bob", "--server", server.base_url]) == 0
    assert "recovery words" not in capsys.readouterr().out

    assert main(["--home", laptop, "devices", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 1 and listed[0]["this_device"] is True
    first_id = listed[0]["device_id"]

    assert main(["--home", laptop, "rotate-key"]) == 0
    assert "new key" in capsys.readouterr().out
    assert main(["--home", laptop, "devices", "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert len(rotated) == 1 and rotated[0]["device_id"] != first_id

    # the last device cannot be unlinked
    assert main(["--home", laptop, "unlink", rotated[0]["name"]]) == 1
    assert "last device" in capsys.readouterr().err

    # every home lost: the words get the account back under a new key
    monkeypatch.setattr("sys.stdin", io.StringIO(words.upper() + "\n"))
    fresh = str(tmp_path / "fresh")
    assert main(["--home", fresh, "recover", "bob", "--server", server.base_url]) == 0
    captured = capsys.readouterr()
    assert "recovered bob" in captured.out
    assert "key change" in captured.err
    old = Home(tmp_path / "laptop").unlock(PASSPHRASE).identity.public_key()
    new = Home(tmp_path / "fresh").unlock(PASSPHRASE).identity.public_key()
    assert old != new
    assert main(["--home", fresh, "devices", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["this_device"] is True


def test_recover_refuses_bad_words_before_asking_anything(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("abandon " * 23 + "zoo\n"))
    home = tmp_path / "fresh"
    assert main(["--home", str(home), "recover", "bob", "--server", server.base_url]) == 1
    assert "do not check out" in capsys.readouterr().err
    assert not (home / "account.key").exists()
