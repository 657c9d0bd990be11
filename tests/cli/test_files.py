"""``pqcall send-file``, ``inbox`` and ``receive`` in-process, against a real in-process server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

import pytest

from pqcall.cli.files import Meter
from pqcall.cli.output import Console, byte_size, progress_text
from pqcall.client.home import AccountConfig, Home
from pqcall.client.phone import register
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from tests.cli.helpers import run

from ..server.conftest import RunningServer

PASSPHRASE = "correct horse battery staple"
CONTENT = b"quarterly numbers\n" * 5000


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PQCALL_HOME", "PQCALL_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASSPHRASE)


def homes(server: RunningServer, tmp_path: Path, *names: str) -> list[str]:
    for name in names:
        asyncio.run(
            register(
                Home(tmp_path / name),
                name,
                server.base_url,
                PASSPHRASE,
                kdf_params=INSECURE_TEST_KDF_PARAMS,
            )
        )
    return [str(tmp_path / name) for name in names]


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err.strip()


def test_send_inbox_receive(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = homes(server, tmp_path, "alice", "bob")
    path = tmp_path / "numbers.csv"
    path.write_bytes(CONTENT)
    code, out, _ = run(capsys, "--home", alice, "send-file", "bob", str(path), "--json")
    assert code == 0
    sent = json.loads(out)
    assert sent["recipient"] == "bob" and sent["name"] == "numbers.csv"
    assert sent["size"] == len(CONTENT) and sent["ciphertext_size"] > len(CONTENT)
    assert set(sent) >= {"file_id", "seconds", "mb_per_s"}
    # human inbox: the id, the sender, and that the name is encrypted
    code, out, _ = run(capsys, "--home", bob, "inbox")
    assert code == 0 and sent["file_id"] in out and "alice" in out and "new" in out
    assert "names and exact sizes are encrypted" in out
    code, out, _ = run(capsys, "--home", bob, "inbox", "--json")
    (entry,) = [json.loads(line) for line in out.splitlines()]
    assert entry["file_id"] == sent["file_id"] and entry["sender_trust"] == "new"
    # receive
    target = tmp_path / "inbox-out"
    code, out, _ = run(
        capsys, "--home", bob, "receive", sent["file_id"], "--out", str(target), "--json"
    )
    assert code == 0
    received = json.loads(out)
    assert received["path"] == str(target / "numbers.csv") and received["sender"] == "alice"
    assert (target / "numbers.csv").read_bytes() == CONTENT
    code, out, _ = run(capsys, "--home", bob, "inbox")
    assert code == 0 and out.strip() == "no files waiting"


def test_changed_key_is_one_warning(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _ = homes(server, tmp_path, "alice", "bob")
    Home(Path(alice)).contacts().check("bob", IdentityPrivateKey.generate().public_key())
    path = tmp_path / "numbers.csv"
    path.write_bytes(CONTENT)
    code, out, err = run(capsys, "--home", alice, "send-file", "bob", str(path))
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert line.startswith("!!! SECURITY WARNING: bob's identity key is not the one you saved")


def test_receive_unknown_id(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (bob,) = homes(server, tmp_path, "bob")
    code, _, err = run(capsys, "--home", bob, "receive", "0" * 32)
    assert code == 1
    assert one_error_line(err) == f"pqcall: no file {'0' * 32} waiting for you on the server"


# ---------------------------------------------------------------- no server


@pytest.fixture
def offline_home(tmp_path: Path) -> str:
    home = Home(tmp_path / "alice")
    home.create_account(PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home.save_config(
        AccountConfig(
            username="alice",
            server_url=f"http://127.0.0.1:{port}",
            server_name="test",
            created=1_700_000_000,
        )
    )
    return str(home.path)


def test_missing_file(
    offline_home: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--home", offline_home, "send-file", "bob", str(tmp_path / "nope"))
    assert code == 1
    assert (
        one_error_line(err) == f"pqcall: cannot read {tmp_path / 'nope'}: No such file or directory"
    )


def test_bad_file_id(offline_home: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--home", offline_home, "receive", "../etc")
    assert code == 1
    assert one_error_line(err) == (
        "pqcall: '../etc' is not a file id (32 hex digits, from pqcall inbox)"
    )


def test_server_unreachable(offline_home: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--home", offline_home, "inbox")
    assert code == 1
    assert one_error_line(err).startswith("pqcall: cannot reach the server at http://127.0.0.1:")


def test_no_account(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--home", str(tmp_path / "empty"), "inbox")
    assert code == 1
    assert one_error_line(err) == (
        f"pqcall: no account in {tmp_path / 'empty'}; create one with: pqcall register NAME"
    )


def test_progress_text() -> None:
    assert progress_text("uploading", 50_000_000, 200_000_000, 25_000_000.0) == (
        "uploading  [######..................]   25%  50.0 MB / 200.0 MB  25.0 MB/s  ETA 00:06"
    )
    assert progress_text("downloading", 0, 1000, None) == (
        "downloading  [........................]    0%  0 B / 1.00 kB  -  ETA -"
    )
    assert byte_size(999) == "999 B" and byte_size(1_500_000) == "1.50 MB"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_meter_rate_counts_only_this_run() -> None:
    now = [0.0]
    err = Terminal()
    meter = Meter(Console(json_mode=True, out=io.StringIO(), err=err), clock=lambda: now[0])
    meter("uploading", 100_000_000, 200_000_000)  # resumed at half
    now[0] = 2.0
    meter("uploading", 150_000_000, 200_000_000)
    assert err.getvalue().rsplit("\r", 1)[-1].rstrip() == (
        "uploading  [##################......]   75%  150.0 MB / 200.0 MB  25.0 MB/s  ETA 00:02"
    )
