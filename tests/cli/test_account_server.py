"""``pqcall register`` and a first ``verify``, in-process against a real in-process server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pqcall.cli import main
from pqcall.client.home import Home

from ..server.conftest import RunningServer

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PQCALL_HOME", "PQCALL_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASSPHRASE)


def count_keystore_opening(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every slow keystore operation (each runs the passphrase KDF once)."""
    calls: list[str] = []
    for name in ("unlock", "create_account"):
        original: Callable[..., Any] = getattr(Home, name)

        def counted(
            self: Home, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Home, name, counted)
    return calls


def test_register_runs_the_passphrase_kdf_once(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["--home", str(tmp_path / "alice"), "register", "alice", "--server", server.base_url]
    calls = count_keystore_opening(monkeypatch)
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert calls == ["create_account"]  # not created, then unlocked again to print
    # registering again opens the existing keystore, once
    calls.clear()
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert calls == ["unlock"]
    fingerprint = Home(tmp_path / "alice").unlock(PASSPHRASE).identity.public_key()
    line = f"identity fingerprint: {fingerprint.fingerprint_text()}"
    assert line in first and line in again


def test_verify_of_a_stranger_pins_their_key_from_the_server(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("alice", "bob"):
        argv = ["--home", str(tmp_path / name), "register", name, "--server", server.base_url]
        assert main(argv) == 0
    capsys.readouterr()
    calls = count_keystore_opening(monkeypatch)
    assert main(["--home", str(tmp_path / "alice"), "verify", "bob"]) == 0
    out = capsys.readouterr().out
    assert f"bob is not a contact yet: fetching their key from {server.base_url}" in out
    assert calls == ["unlock"]  # one passphrase KDF; the lookup needs no phone
    bob = Home(tmp_path / "bob").unlock(PASSPHRASE).identity.public_key()
    contact = Home(tmp_path / "alice").contacts().get("bob")
    assert contact is not None and contact.identity == bob and not contact.verified
    assert f"bob's fingerprint: {bob.fingerprint_text()}" in out
