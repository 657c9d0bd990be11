"""What a new user meets first: ``register`` that leaves nothing when it fails, ``--home``
that is a file, ``receive`` with a short id (issue 21, "Small things that add up")."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pqcall.cli.files import pick_file_id
from pqcall.client import registration
from pqcall.exceptions import TransferError
from tests.cli.helpers import run

from ..server.conftest import RunningServer

PASSPHRASE = "correct horse battery staple"
IDS = ["1aeb5dd5" + "0" * 24, "1aeb77aa" + "0" * 24, "c0ffee00" + "0" * 24]


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PQCALL_HOME", "PQCALL_PASSPHRASE_FILE", "PQCALL_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_register_to_no_server_leaves_nothing_and_asks_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registration, "SERVER_START_WAIT_S", 0.5)
    home = tmp_path / "alice"
    url = f"http://127.0.0.1:{closed_port()}"
    code, _, err = run(capsys, "--home", str(home), "register", "alice", "--server", url)
    assert code == 1
    assert err.startswith(f"pqcall: cannot reach the server at {url}")  # not "no passphrase"
    assert not home.exists()


def test_register_of_a_taken_name_leaves_no_key(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASSPHRASE)
    url = server.base_url
    assert run(capsys, "--home", str(tmp_path / "a"), "register", "alice", "--server", url)[0] == 0
    existing = tmp_path / "b"
    existing.mkdir()  # a folder the user made: kept, but nothing left in it
    code, _, err = run(capsys, "--home", str(existing), "register", "alice", "--server", url)
    assert code == 1
    assert "username is taken" in err
    assert list(existing.iterdir()) == []


def test_home_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("hello\n")
    code, _, err = run(capsys, "--home", str(not_a_folder), "whoami")
    assert code == 1
    assert err == f"pqcall: --home {not_a_folder} is a file, not a folder\n"


def test_receive_checks_its_id_before_the_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--home", str(tmp_path), "receive", "xyz")
    assert code == 1
    assert err == "pqcall: 'xyz' is not a file id (32 hex digits, from pqcall inbox)\n"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        pytest.param("c0f", IDS[2], id="unique"),
        pytest.param("1aeb5", IDS[0], id="unique-longer"),
        pytest.param(IDS[1], IDS[1], id="whole"),
    ],
)
def test_receive_prefix_picks_the_one_file(prefix: str, expected: str) -> None:
    assert pick_file_id(prefix, IDS) == expected


def test_receive_prefix_ambiguous_lists_candidates() -> None:
    with pytest.raises(TransferError) as raised:
        pick_file_id("1aeb", IDS)
    assert str(raised.value) == f"1aeb is ambiguous: it starts {IDS[0]}, {IDS[1]}"


def test_receive_prefix_unknown() -> None:
    with pytest.raises(TransferError) as raised:
        pick_file_id("dead", IDS)
    assert str(raised.value) == "no waiting file has an id starting with dead (pqcall inbox)"
