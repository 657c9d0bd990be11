"""The commands in-process, without a running server: user mistakes are one line, exit 1.

Where a command needs an account, it is made directly in a home with a cheap
KDF (:data:`~pqcall.crypto.keystore.INSECURE_TEST_KDF_PARAMS`) and a server URL
where nothing listens.
"""

from __future__ import annotations

import importlib.abc
import json
import socket
import sys
from pathlib import Path

import pytest

from pqcall.client import discovery, registration
from pqcall.client.discovery import DiscoveryUnavailable, FoundServer
from pqcall.client.home import AccountConfig, Home
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from tests.cli.helpers import run

PASSPHRASE = "correct horse battery staple"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


NO_SERVER_WAIT_S = 0.5  # how long register retries a closed port (15 s in use)


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    for name in ("PQCALL_HOME", "PQCALL_PASSPHRASE", "PQCALL_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASSPHRASE)


@pytest.fixture
def home(tmp_path) -> Home:
    """A registered account whose server is not running."""
    home = Home(tmp_path / "alice")
    home.create_account(PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    url = f"http://127.0.0.1:{closed_port()}"
    home.save_config(
        AccountConfig(username="alice", server_url=url, server_name="test", created=1_700_000_000)
    )
    return home


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("pqcall: ")
    return err.strip()


# ---------------------------------------------------------------- account errors


@pytest.mark.parametrize("command", [["call", "bob"], ["listen"], ["whoami"], ["verify", "bob"]])
def test_no_account(capsys, tmp_path, command):
    code, _, err = run(capsys, "--home", str(tmp_path / "empty"), *command)
    assert code == 1
    assert one_error_line(err) == (
        f"pqcall: no account in {tmp_path / 'empty'}; create one with: pqcall register NAME"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["call", "bob", "--audio-in", "silence", "--audio-out", "null"],
        ["listen", "--audio-in", "silence", "--audio-out", "null"],
        ["whoami"],
    ],
)
def test_wrong_passphrase(capsys, monkeypatch, home, command):
    monkeypatch.setenv("PQCALL_PASSPHRASE", "not the passphrase")
    code, _, err = run(capsys, "--home", str(home.path), *command)
    assert code == 1
    assert one_error_line(err) == f"pqcall: wrong passphrase for the account in {home.path}"


def test_passphrase_file(capsys, monkeypatch, home, tmp_path):
    monkeypatch.delenv("PQCALL_PASSPHRASE")
    secret = tmp_path / "pw"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    code, out, _ = run(capsys, "--home", str(home.path), "whoami", "--passphrase-file", str(secret))
    assert code == 0
    assert out.startswith("alice at ")


def test_server_unreachable(capsys, home):
    url = home.load_config().server_url
    audio = ["--audio-in", "silence", "--audio-out", "null"]
    code, _, err = run(capsys, "--home", str(home.path), "call", "bob", *audio)
    assert code == 1
    line = one_error_line(err)
    assert line.startswith(f"pqcall: cannot reach the server at {url}")


def test_whoami(capsys, home):
    identity = home.unlock(PASSPHRASE).identity.public_key()
    config = home.load_config()
    assert config is not None
    code, out, _ = run(capsys, "--home", str(home.path), "whoami")
    assert code == 0
    assert out.splitlines() == [
        f"alice at {config.server_url} (server test)",
        f"identity fingerprint: {identity.fingerprint_text()}",
        f"home: {home.path}",
    ]
    code, out, _ = run(capsys, "--home", str(home.path), "whoami", "--json")
    assert json.loads(out) == {
        "username": "alice",
        "server_url": config.server_url,
        "server_name": "test",
        "fingerprint": identity.fingerprint_text(),
        "home": str(home.path),
        "registered": "2023-11-14T22:13:20.000Z",  # issue 21: ISO-8601 beside unix times
        "registered_unix": 1_700_000_000,
    }


def test_home_from_the_environment(capsys, monkeypatch, home):
    monkeypatch.setenv("PQCALL_HOME", str(home.path))
    code, out, _ = run(capsys, "whoami")
    assert code == 0
    assert f"home: {home.path}" in out


# ---------------------------------------------------------------- register


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["register", "x", "--server", "http://127.0.0.1:1"], "username", id="name"),
        pytest.param(
            ["register", "alice", "--server", "ftp://example.org"],
            "pqcall: 'ftp://example.org' is not a server URL: expected http://HOST:PORT"
            " or https://...",
            id="url",
        ),
    ],
)
def test_register_bad_input(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, "--home", str(tmp_path / "h"), *argv)
    assert code == 1
    assert message in one_error_line(err)
    assert not (tmp_path / "h").exists()


def test_register_with_an_unreachable_server(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(registration, "SERVER_START_WAIT_S", NO_SERVER_WAIT_S)
    port = closed_port()
    code, _, err = run(
        capsys, "--home", str(tmp_path / "h"), "register", "alice", "--server", f"127.0.0.1:{port}"
    )
    assert code == 1
    assert one_error_line(err).startswith(
        f"pqcall: cannot reach the server at http://127.0.0.1:{port}"
    )


def found(name: str, url: str) -> FoundServer:
    return FoundServer(
        name=name, url=url, addresses=("10.0.0.5",), port=5001, version="0.1.0", relay_port=5001
    )


def test_register_finds_no_server_on_the_lan(capsys, monkeypatch, tmp_path):
    async def nothing(*args, **kwargs):
        return []

    monkeypatch.setattr(discovery, "find_servers", nothing)
    code, out, err = run(capsys, "--home", str(tmp_path / "h"), "register", "alice")
    assert code == 1
    assert "looking for a pqcall server on the LAN" in out
    assert one_error_line(err) == (
        "pqcall: no pqcall server found on the LAN; start one (pqcall server) or give --server URL"
    )


def test_register_lists_several_servers(capsys, monkeypatch, tmp_path):
    async def two(*args, **kwargs):
        return [found("a", "http://10.0.0.5:5001"), found("b", "http://10.0.0.6:5001")]

    monkeypatch.setattr(discovery, "find_servers", two)
    code, out, err = run(capsys, "--home", str(tmp_path / "h"), "register", "alice")
    assert code == 1
    assert "http://10.0.0.5:5001  a" in out
    assert "http://10.0.0.6:5001  b" in out
    assert one_error_line(err) == (
        "pqcall: 2 servers found on the LAN; choose one with --server URL"
    )


def test_register_uses_the_one_server_found(capsys, monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"

    async def one(*args, **kwargs):
        return [found("pqcall on box", url)]

    monkeypatch.setattr(discovery, "find_servers", one)
    monkeypatch.setattr(registration, "SERVER_START_WAIT_S", NO_SERVER_WAIT_S)
    code, out, err = run(capsys, "--home", str(tmp_path / "h"), "register", "alice")
    assert code == 1
    assert f"found pqcall on box at {url}" in out
    assert one_error_line(err).startswith(f"pqcall: cannot reach the server at {url}")


def test_register_without_mdns(capsys, monkeypatch, tmp_path):
    async def unavailable(*args, **kwargs):
        raise DiscoveryUnavailable("no multicast-capable interface")

    monkeypatch.setattr(discovery, "find_servers", unavailable)
    code, _, err = run(capsys, "--home", str(tmp_path / "h"), "register", "alice")
    assert code == 1
    assert one_error_line(err) == (
        "pqcall: cannot look for a server on the LAN (no multicast-capable interface);"
        " give one with --server URL"
    )


# ---------------------------------------------------------------- contacts, verify, history


def pin(home: Home, name: str) -> IdentityPrivateKey:
    identity = IdentityPrivateKey.generate()
    home.contacts().check(name, identity.public_key())
    return identity


def test_contacts(capsys, home):
    code, out, _ = run(capsys, "--home", str(home.path), "contacts")
    assert code == 0
    assert out.startswith("no contacts yet")
    code, out, _ = run(capsys, "--home", str(home.path), "contacts", "--json")
    assert (code, out) == (0, "")

    bob = pin(home, "bob")
    carol = pin(home, "carol")
    home.contacts().mark_verified("carol")
    home.contacts().check("bob", IdentityPrivateKey.generate().public_key())  # a key change
    code, out, err = run(capsys, "--home", str(home.path), "contacts")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "fingerprint", "verified", "warning", "last", "call"]
    assert lines[2].split()[0] == "bob"
    assert bob.public_key().fingerprint_text() in lines[2]
    assert "KEY CHANGED" in lines[2]
    assert lines[3].split()[0] == "carol"
    assert "yes" in lines[3]
    assert "!!! SECURITY WARNING: bob's identity key changed" in err

    code, out, _ = run(capsys, "--home", str(home.path), "contacts", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["name"] for record in records] == ["bob", "carol"]
    assert records[0]["key_changed"] is not None
    assert records[1]["verified"] is True
    assert records[1]["fingerprint"] == carol.public_key().fingerprint_text()


def test_verify(capsys, home):
    pin(home, "bob")
    ours = home.unlock(PASSPHRASE).identity.public_key()
    number = home.contacts().safety_number("alice", ours, "bob")
    code, out, _ = run(capsys, "--home", str(home.path), "verify", "bob")
    assert code == 0
    assert "safety number of alice and bob:" in out
    groups = number.split()
    assert "  " + " ".join(groups[:4]) in out
    assert "pqcall verify bob --confirm" in out
    assert not home.contacts().get("bob").verified

    code, out, _ = run(capsys, "--home", str(home.path), "verify", "Bob", "--confirm")
    assert code == 0
    assert "bob is now verified" in out
    assert home.contacts().get("bob").verified


def test_verify_a_key_change(capsys, home):
    pin(home, "bob")
    new = IdentityPrivateKey.generate().public_key()
    home.contacts().check("bob", new)
    ours = home.unlock(PASSPHRASE).identity.public_key()
    new_number = home.contacts().safety_number("alice", ours, "bob", changed_key=True)

    code, out, err = run(capsys, "--home", str(home.path), "verify", "bob", "--confirm")
    assert code == 1  # confirming the old key while a change is pending is refused
    assert "!!! SECURITY WARNING: bob's identity key changed" in err
    assert "with bob's NEW key" in out
    assert " ".join(new_number.split()[:4]) in out
    assert not home.contacts().get("bob").verified

    code, out, _ = run(capsys, "--home", str(home.path), "verify", "bob", "--accept-new-key")
    assert code == 0
    contact = home.contacts().get("bob")
    assert contact is not None
    assert contact.identity == new
    assert contact.key_changed is None
    assert not contact.verified

    code, _, err = run(capsys, "--home", str(home.path), "verify", "bob", "--accept-new-key")
    assert code == 1
    assert one_error_line(err) == "pqcall: no key change recorded for bob"


def test_verify_yourself(capsys, home):
    code, _, err = run(capsys, "--home", str(home.path), "verify", "alice")
    assert code == 1
    assert one_error_line(err) == "pqcall: that is you: verify the people you call"


def test_history(capsys, home):
    code, out, _ = run(capsys, "--home", str(home.path), "history")
    assert (code, out) == (0, "no calls yet\n")
    history = home.history()
    for index in range(3):
        history.append(
            {
                "call_id": f"{index:032x}",
                "peer": "bob",
                "direction": "outgoing",
                "result": "ended",
                "started_unix": 1_700_000_000 + index,
                "answered_unix": 1_700_000_001 + index,
                "duration_s": 61.0,
                "path": "direct",
                "mos": 4.4,
            }
        )
    code, out, _ = run(capsys, "--home", str(home.path), "history")
    lines = out.splitlines()
    assert len(lines) == 5
    assert lines[2].split()[2:] == ["bob", "outgoing", "answered", "01:01", "direct", "4.4"]
    code, out, _ = run(capsys, "--home", str(home.path), "history", "--json", "--limit", "2")
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["call_id"] for record in records] == [f"{2:032x}", f"{1:032x}"]
    assert [record["outcome"] for record in records] == ["answered", "answered"]


def test_history_says_the_shared_outcome_words(capsys, home):
    # issue 21: the history's words are the CLI's, the JSON's and the UI's
    history = home.history()
    for index, (direction, result, reason) in enumerate(
        [
            ("outgoing", "missed", "no answer: bob was offline"),
            ("outgoing", "rejected", "declined"),
            ("incoming", "missed", "no answer"),
            ("outgoing", "ended", "cancelled"),
            ("incoming", "failed", "bob's phone could not open its microphone: busy"),
        ]
    ):
        history.append(
            {
                "call_id": f"{index:032x}",
                "peer": "bob",
                "direction": direction,
                "result": result,
                "reason": reason,
                "started_unix": 1_700_000_000 + index,
            }
        )
    code, out, _ = run(capsys, "--home", str(home.path), "history")
    assert code == 0
    header, _rule, *rows = out.splitlines()
    assert "outcome" in header.split()
    assert [row.split("  bob  ", 1)[1].split()[1] for row in rows] == [
        "failed:",
        "cancelled",
        "missed",
        "declined",
        "no",  # "no answer"
    ]
    code, out, _ = run(capsys, "--home", str(home.path), "history", "--json")
    assert [json.loads(line)["outcome"] for line in out.splitlines()] == [
        "failed: bob's phone could not open its microphone: busy",
        "cancelled",
        "missed",
        "declined",
        "no answer",
    ]


class _NoPortAudio(importlib.abc.MetaPathFinder):
    """Fails ``import sounddevice`` the way it fails where libportaudio2 is missing."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


def test_devices_without_portaudio(capsys, monkeypatch):
    # whether or not PortAudio is installed here, the import fails as it does without it
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    code, _, err = run(capsys, "audio-devices")
    assert code == 1
    assert one_error_line(err) == "pqcall: PortAudio library not found: apt install libportaudio2"


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (["--audio-in", "tone:abc"], "invalid source 'tone:abc'"),
        (["--audio-in", "/nonexistent/a.wav"], "/nonexistent/a.wav"),
        (["--audio-out", "/nonexistent/dir/b.wav"], "cannot write /nonexistent/dir/b.wav"),
        (["--audio-out", "silence"], "'silence' is a source, not a sink"),
    ],
)
@pytest.mark.parametrize("command", [["listen"], ["call", "bob"]])
def test_audio_is_checked_before_going_online(capsys, home, command, audio, message):
    defaults = {"--audio-in": "silence", "--audio-out": "null"}
    defaults[audio[0]] = audio[1]
    options = [item for pair in defaults.items() for item in pair]
    code, _, err = run(capsys, "--home", str(home.path), *command, *options)
    assert code == 1
    assert message in one_error_line(err)


def test_demo_out_must_be_a_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "demo", "--out", str(blocker / "sub"))
    assert code == 1
    assert one_error_line(err).startswith(f"pqcall: cannot create {blocker / 'sub'}")


def test_paths_are_absolute(capsys, monkeypatch, home, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "--home", Path(home.path).name, "whoami")
    assert code == 0
    assert f"home: {home.path}" in out
