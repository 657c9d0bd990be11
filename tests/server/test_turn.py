"""TURN credentials (coturn's REST scheme) handed out with each call's relay grant.

The credentials are checked against an independent computation here and against a
real coturn in tests/e2e/test_turn.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from pqcall.exceptions import LocalProtocolError, ServerError
from pqcall.server.runner import add_arguments, settings_from_args
from pqcall.server.turn import TurnService, load_turn_secret, turn_credentials
from pqcall.signaling.messages import EVENT_CALL_ACCEPTED, CallDetail
from pqcall.transport.turn import TurnUrl

from .conftest import RunningServer
from .pushclient import EventSocket, accept, initiate

SECRET = b"a shared secret of coturn and pqcall"
URLS = ("turn:turn.example.org?transport=tcp", "turns:turn.example.org:443")


def secret_file(directory: Path, mode: int = 0o600, content: bytes = SECRET + b"\n") -> Path:
    path = directory / "turn-secret"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def expected_password(username: str) -> str:
    """coturn's computation, independently of pqcall.server.turn."""
    return base64.b64encode(hmac.new(SECRET, username.encode(), hashlib.sha1).digest()).decode()


def test_credentials_follow_the_rest_scheme():
    username, password = turn_credentials(SECRET, "call.c", 1_800_000_000)
    assert username == "1800000000:call.c"
    assert password == expected_password(username)
    assert turn_credentials(b"another secret!!", "call.c", 1_800_000_000)[1] != password


def test_each_party_gets_its_own_credentials_that_expire():
    service = TurnService(tuple(map(TurnUrl.parse, URLS)), SECRET, ttl_s=600, clock=lambda: 1000.5)
    caller, callee = service.grant("c1", is_caller=True), service.grant("c1", is_caller=False)
    assert caller.username == "1600:c1.c" and callee.username == "1600:c1.e"
    assert caller.password == expected_password("1600:c1.c") != callee.password
    assert caller.urls == ["turn:turn.example.org:3478?transport=tcp", "turns:turn.example.org:443"]
    assert "secret" not in repr(service)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("turn:192.0.2.1", TurnUrl("192.0.2.1", 3478, "udp")),
        ("turn:turn.example.org:80?transport=tcp", TurnUrl("turn.example.org", 80, "tcp")),
        ("turns:turn.example.org", TurnUrl("turn.example.org", 5349, "tls")),
        ("turns:[2001:db8::1]:443?transport=tcp", TurnUrl("2001:db8::1", 443, "tls")),
    ],
)
def test_turn_urls(text, parsed):
    assert TurnUrl.parse(text) == parsed
    assert TurnUrl.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stun:192.0.2.1", "must start with turn: or turns:"),
        ("turn:", "has no host"),
        ("turn:192.0.2.1:70000", "port '70000' is out of range"),
        ("turn:192.0.2.1?transport=sctp", "transport must be udp or tcp"),
        ("turns:192.0.2.1?transport=udp", "turns: runs over tcp only"),
        ("turn:192.0.2.1?foo=1", r"only \?transport= is understood"),
    ],
)
def test_bad_turn_urls(text, message):
    with pytest.raises(LocalProtocolError, match=message):
        TurnUrl.parse(text)


def test_the_secret_file_must_be_private_and_long_enough(tmp_path):
    assert load_turn_secret(secret_file(tmp_path)) == SECRET
    with pytest.raises(ServerError, match=r"accessible by others \(mode 0644\); run: chmod 600"):
        load_turn_secret(secret_file(tmp_path, 0o644))
    with pytest.raises(ServerError, match="shorter than 16 bytes"):
        load_turn_secret(secret_file(tmp_path, content=b"short\n"))
    with pytest.raises(ServerError, match="cannot read the TURN secret file"):
        load_turn_secret(tmp_path / "missing")


def test_the_flags_go_together(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    path = secret_file(tmp_path)
    flags = ["--data-dir", str(tmp_path), "--turn", URLS[0], "--turn", URLS[1]]
    args = parser.parse_args([*flags, "--turn-secret-file", str(path)])
    settings = settings_from_args(args)
    assert settings.turn_urls == URLS and settings.turn_secret_file == path
    with pytest.raises(ServerError, match="--turn and --turn-secret-file go together"):
        settings_from_args(parser.parse_args(["--data-dir", str(tmp_path), "--turn", URLS[0]]))


@pytest.fixture
def server(
    start_server: Callable[..., AbstractContextManager[RunningServer]], tmp_path: Path
) -> Iterator[RunningServer]:
    """A server that hands out TURN credentials."""
    path = secret_file(tmp_path)
    with start_server(rate_limit_scale=0, turn_urls=URLS, turn_secret_file=path) as running:
        yield running


def test_a_call_carries_each_partys_turn_credentials(server, account):
    alice, bob = account("alice"), account("bob")
    alice_events = EventSocket(server, alice.token)
    call_id, answer = initiate(alice.client, "Bob", candidates=[])
    assert answer.status_code == 201, answer.text
    accepted = accept(bob.client, call_id, candidates=[])
    assert accepted.status_code == 200, accepted.text
    bob_view = CallDetail.model_validate(accepted.json())
    alice_view = CallDetail.model_validate(alice_events.expect(EVENT_CALL_ACCEPTED)["payload"])
    grants = [view.relay.turn for view in (alice_view, bob_view) if view.relay is not None]
    assert len(grants) == 2 and None not in grants
    alice_turn, bob_turn = grants
    assert alice_turn is not None and bob_turn is not None
    assert alice_turn.username.endswith(f":{call_id}.c")
    assert bob_turn.username.endswith(f":{call_id}.e")
    for grant in (alice_turn, bob_turn):
        assert grant.urls == [str(TurnUrl.parse(url)) for url in URLS]
        assert grant.password == expected_password(grant.username)
        assert int(grant.username.split(":")[0]) > 1_700_000_000
