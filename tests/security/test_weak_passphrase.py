"""Issue 20 finding 9: a new account accepted the passphrase ``a``.

The keystore's slow KDF multiplies the cost of each guess, but a passphrase
among the first few thousand guesses falls anyway once the key file is copied.
``pqcall register`` and the page's account creation now refuse one that the
zxcvbn estimate puts under 10^8 guesses, unless told to keep it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pqcall.cli import main
from pqcall.client.home import Home
from pqcall.crypto.keystore import WeakPassphrase, check_passphrase_strength
from tests.cli.helpers import PASSPHRASE
from tests.server.conftest import RunningServer
from tests.ui.test_app import running_ui

WEAK = "a"
A_REFUSAL = (
    "weak passphrase: it would fall to about 10^1 guesses (at least 10^8 needed):"
    " use four or more uncommon words"
)


@pytest.mark.parametrize(
    "weak", ["", "a", "password1", "alice", "alice2024", "qwertyuiop", "hunter2hunter2"]
)
def test_guessable_passphrases_are_refused(weak: str) -> None:
    with pytest.raises(WeakPassphrase, match=r"^weak passphrase: "):
        check_passphrase_strength(weak, user_inputs=("alice",))


def test_the_refusal_is_one_line_that_names_the_override() -> None:
    with pytest.raises(WeakPassphrase) as refused:
        check_passphrase_strength(WEAK, override="--weak-passphrase")
    assert str(refused.value) == A_REFUSAL + ", or --weak-passphrase to keep it"


def test_the_test_suites_passphrase_and_long_ones_pass() -> None:
    check_passphrase_strength(PASSPHRASE, user_inputs=("alice",))
    check_passphrase_strength("maple orbit quietly fjord lantern " * 4)  # past zxcvbn's 72


def _register(home: Path, server: RunningServer, secret: Path, *extra: str) -> int:
    argv = ["--home", str(home), "register", "alice", "--server", server.base_url]
    return main([*argv, "--passphrase-file", str(secret), *extra])


def test_pqcall_register_refuses_a_weak_passphrase(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("PQCALL_HOME", "PQCALL_PASSPHRASE", "PQCALL_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    secret = tmp_path / "passphrase"
    secret.write_text(WEAK + "\n")
    secret.chmod(0o600)
    assert _register(tmp_path / "alice", server, secret) != 0
    err = capsys.readouterr().err
    assert A_REFUSAL + ", or --weak-passphrase to keep it" in err
    assert len(err.strip().splitlines()) == 1
    assert not Home(tmp_path / "alice").has_account()
    # told to keep it, it does
    assert _register(tmp_path / "alice", server, secret, "--weak-passphrase") == 0
    assert Home(tmp_path / "alice").has_account()


def test_the_page_refuses_a_weak_passphrase_at_setup(server: RunningServer, tmp_path: Path) -> None:
    async def attempt() -> None:
        async with running_ui(tmp_path, "alice") as ui:
            body = {"name": "alice", "server_url": server.base_url, "passphrase": WEAK}
            refused = await ui.post("/register", body)
            assert refused.status_code == 400
            assert refused.json() == {"error": A_REFUSAL + ", or tick 'keep it' to keep it"}
            assert not Home(tmp_path / "alice").has_account()
            kept = await ui.post("/register", {**body, "weak_passphrase": True})
            assert kept.status_code == 200, kept.text
            assert (await ui.state())["phase"] == "ready"

    asyncio.run(asyncio.wait_for(attempt(), 60))
