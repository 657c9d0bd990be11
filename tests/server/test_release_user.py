"""``pqcall server release-user NAME`` (issue 22): a real CLI process on a running server's DB.

The released name can be registered again by someone else with another key;
the old key, tokens and devices no longer work; contacts get the new key (and
their phones the loud key-change warning, tests/e2e). An unknown name is one
line on stderr and exit status 1. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.storage import account_store
from pqcall.signaling.messages import b64decode
from tests.harness import scaled

from .conftest import SERVER_NAME, login, registration
from .pushclient import EventSocket, register_and_login
from .test_bus import redis_url  # noqa: F401 (the fixture)

CLI_TIMEOUT_S = scaled(60.0)


def _release(server, name, *options):
    data_dir = server.settings.data_dir
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pqcall",
            "server",
            "--db",
            server.settings.db_url,
            "--data-dir",
            str(data_dir),
            *options,
            "release-user",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        # without `make test`'s PYTHONASYNCIODEBUG: on a busy machine its slow-callback
        # warnings join stderr, whose exact lines the tests check
        env={
            **{key: value for key, value in os.environ.items() if key != "PYTHONASYNCIODEBUG"},
            "PQCALL_HOME": str(data_dir.parent / "home"),
        },
        check=False,
    )


def test_release_user_frees_the_name_for_another_key(db_url, server, account, monkeypatch):
    # the running server's caches trust a lookup 10 s: make them ask the database every time
    monkeypatch.setattr(account_store, "NAME_CACHE_TTL_S", 0.0)
    server.app.state.context.storage.logins.token_cache.ttl_s = 0.0
    alice = account("alice")
    bob = account("bob")
    assert bob.client.get("/users/alice").status_code == 200  # bob knows alice's old key
    socket = EventSocket(server, alice.token)
    try:
        done = _release(server, "Alice")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "released alice: keys, devices, 1 tokens and pending events deleted;"
            " the name can be registered again"
        ]
        assert "WARNING:     pqcall.server: released user alice by operator" in done.stderr
        # the old owner is out
        assert alice.client.get("/account/devices").status_code == 401
        assert bob.client.get("/users/alice").status_code == 404
        with server.client() as client:
            assert login(client, alice.identity, "alice").status_code == 401
            # and the name is anyone's: here someone with a new key
            newcomer = IdentityPrivateKey.generate()
            assert client.post("/register", json=registration(newcomer, "alice")).status_code == 201
            assert login(client, newcomer, "alice").status_code == 200
        entry = bob.client.get("/users/alice").json()
        assert b64decode(entry["identity"]) == newcomer.public_key().encode()
        socket.assert_quiet()  # the old socket carries nothing for the new account
    finally:
        socket.close()


def test_release_of_an_unknown_name_is_one_line_and_status_1(server):
    done = _release(server, "nobody")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["pqcall: no user named 'nobody'"]


def test_release_with_the_bus_closes_the_old_sockets_at_once(start_server, redis_url):  # noqa: F811
    # real Redis: the CLI tells the running node, whose caches drop and sockets close now
    with start_server(bus_url=redis_url) as server:
        _, token = register_and_login(server, "alice")
        _, bob_token = register_and_login(server, "bob")
        socket = EventSocket(server, token)
        try:
            with server.client(bob_token) as bob:
                assert bob.get("/users/alice").status_code == 200  # cached on the node
                done = _release(server, "alice", "--bus", redis_url, "--name", SERVER_NAME)
                assert done.returncode == 0, done.stderr
                assert socket.wait_closed() == (4401, "logged out")
                assert bob.get("/users/alice").status_code == 404
            with server.client(token) as old:
                assert old.get("/account/devices").status_code == 401
        finally:
            socket.close()
