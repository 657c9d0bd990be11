"""Issue 20 finding 4: logging out did not close the push WebSocket.

After ``POST /auth/logout`` every REST request with the token answered 401,
but a push socket opened with it stayed open and kept receiving
``call.incoming`` (offers, candidates, addresses, relay grants) until the
token's expiry, up to an hour later. Revoking a token now closes the sockets
opened with it at once (4401 "logged out"); "log out everywhere" revokes every
token of the account.
"""

from __future__ import annotations

import asyncio
import time

from pqcall.client.api import ServerApi
from pqcall.signaling.messages import EVENT_CALL_INCOMING
from tests.harness import TIMEOUT_SCALE
from tests.server.conftest import (
    account,
    migrated_sqlite,
    server,
    server_db_url,
    start_server,
)
from tests.server.pushclient import EventSocket, initiate, log_in

__all__ = ["account", "migrated_sqlite", "server", "server_db_url", "start_server"]

PROMPTLY_S = 1.0 * TIMEOUT_SCALE  # how soon a revoked token's socket must close


def test_logout_closes_the_push_socket_at_once(server, account):
    alice, bob = account("alice"), account("bob")
    phone = EventSocket(server, alice.token)
    assert alice.client.post("/auth/logout").status_code == 204
    started = time.monotonic()
    assert phone.wait_closed(timeout=PROMPTLY_S) == (4401, "logged out")
    assert time.monotonic() - started < PROMPTLY_S
    # the call is stored for alice's next login, but nothing reaches the old socket
    _, answer = initiate(bob.client, "alice")
    assert answer.status_code == 201, answer.text
    assert alice.client.get("/calls/history").status_code == 401
    again = EventSocket(server, alice.token, wait_ready=False)
    assert again.wait_closed() == (4401, "bearer token is not valid")


def test_logout_closes_only_that_tokens_sockets(server, account):
    alice, bob = account("alice"), account("bob")
    other_token = log_in(server, alice.identity, "alice")  # her second phone
    first, second = EventSocket(server, alice.token), EventSocket(server, other_token)
    assert alice.client.post("/auth/logout").status_code == 204
    assert first.wait_closed(timeout=PROMPTLY_S) == (4401, "logged out")
    call_id, _ = initiate(bob.client, "alice")
    assert second.expect(EVENT_CALL_INCOMING)["payload"]["call_id"] == call_id
    second.close()


def test_logout_everywhere_closes_every_socket_of_the_account(server, account):
    alice, bob = account("alice"), account("bob")
    tokens = [alice.token] + [log_in(server, alice.identity, "alice") for _ in range(2)]
    sockets = [EventSocket(server, token) for token in tokens]
    bob_phone = EventSocket(server, bob.token)
    assert alice.client.post("/auth/logout/everywhere").status_code == 204
    for socket in sockets:
        assert socket.wait_closed(timeout=PROMPTLY_S) == (4401, "logged out")
    for token in tokens:
        with server.client(token) as client:
            assert client.get("/calls/history").status_code == 401
    # bob is not touched, and nothing can be done with alice's old tokens
    _, refused = initiate(alice.client, "bob")
    assert refused.status_code == 401
    bob_phone.assert_quiet()
    bob_phone.close()


def test_the_client_logs_out_everywhere(server, account):
    alice = account("alice")
    phone = EventSocket(server, alice.token)

    async def main() -> None:
        async with ServerApi(
            server.base_url, "alice", alice.identity, server_name=server.settings.server_name
        ) as api:
            await api.logout(everywhere=True)  # logs in for a token, then revokes them all

    asyncio.run(main())
    assert phone.wait_closed(timeout=PROMPTLY_S) == (4401, "logged out")
