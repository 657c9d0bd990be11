"""ServerApi against the real server (on SQLite): accounts, login, errors, calls."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from pqcall.client.api import ServerApi
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import ApiError, ServerError, ServerUnreachable, UnknownUser
from pqcall.signaling.messages import (
    EVENT_CALL_ACCEPTED,
    EVENT_CALL_CONFIRMED,
    EVENT_CALL_ENDED,
    EVENT_CALL_INCOMING,
    AcceptCall,
    Candidate,
    ConfirmCall,
    Event,
    HangupCall,
    InitiateCall,
    RejectCall,
)
from tests.harness import EVENT_TIMEOUT_S, free_port, run_async

from ..server.conftest import FakeClock, RunningServer, bundle_for
from .conftest import new_account, new_call_id, next_event

SERVER_NAME = "test.pqcall"  # what tests/server/conftest.py names its servers
TOKEN_TTL_S = 3600.0

OFFER = b"offer " * 20  # opaque to the server; any bytes do
ANSWER = b"answer " * 20
CONFIRM = b"confirm " * 4


# ---------------------------------------------------------------- accounts and login


@run_async
async def test_register_pins_the_server_name_and_logs_in_lazily(server: RunningServer) -> None:
    identity = IdentityPrivateKey.generate()
    async with ServerApi(server.base_url, "Alice", identity) as alice:
        assert alice.username == "alice"
        assert alice.server_name is None
        view = await alice.register(bundle_for(identity, "alice"))
        assert alice.server_name == SERVER_NAME  # from /health: the caller saves it
        assert (view.username, view.identity) == ("alice", identity.public_key().encode())
        assert alice.logins == 0  # registering needs no login

        again = await alice.register(bundle_for(identity, "alice"))  # harmless
        assert again.identity == view.identity

        async with await new_account(server.base_url, "bob") as bob:
            found = await alice.user("BOB")  # the first authenticated call logs in
            assert found.username == "bob"
            assert alice.logins == 1
            assert (await alice.user("bob")).identity == found.identity
            assert alice.logins == 1  # the token is reused
            assert (await bob.user("alice")).identity == identity.public_key().encode()

        health = await alice.health()
        assert (health.status, health.server_name) == ("ok", SERVER_NAME)


@run_async
async def test_login_pins_the_name_from_the_challenge(server: RunningServer) -> None:
    identity = IdentityPrivateKey.generate()
    await (await new_account(server.base_url, "alice", identity)).close()
    async with ServerApi(server.base_url, "alice", identity) as api:
        answer = await api.login()
        assert api.server_name == SERVER_NAME
        assert answer.token == await api.token()
        assert api.logins == 1


@run_async
async def test_unknown_user(server: RunningServer) -> None:
    async with await new_account(server.base_url, "alice") as alice:
        with pytest.raises(UnknownUser) as caught:
            await alice.user("Carol")
        assert (caught.value.status, str(caught.value)) == (
            404,
            "no user named carol on this server",
        )

        with pytest.raises(UnknownUser, match=r"^no user named carol on this server$"):
            await alice.initiate(InitiateCall(call_id=new_call_id(), callee="carol", offer=OFFER))


@run_async
async def test_login_without_an_account(server: RunningServer) -> None:
    async with ServerApi(
        server.base_url, "dave", IdentityPrivateKey.generate(), server_name=SERVER_NAME
    ) as dave:
        # the server does not tell an unknown name from a wrong key (issue 20, finding 11)
        with pytest.raises(ApiError) as caught:
            await dave.history()
        assert (caught.value.status, str(caught.value)) == (401, "login signature does not verify")


@run_async
async def test_another_identity_cannot_take_or_use_a_name(server: RunningServer) -> None:
    await (await new_account(server.base_url, "alice")).close()
    mallory = IdentityPrivateKey.generate()
    async with ServerApi(server.base_url, "alice", mallory) as api:
        with pytest.raises(ApiError) as caught:
            await api.register(bundle_for(mallory, "alice"))
        assert (caught.value.status, str(caught.value)) == (409, "username is taken")

        with pytest.raises(ApiError) as caught:
            await api.user("alice")
        assert (caught.value.status, str(caught.value)) == (401, "login signature does not verify")


@run_async
async def test_a_server_claiming_another_name_is_refused(server: RunningServer) -> None:
    identity = IdentityPrivateKey.generate()
    await (await new_account(server.base_url, "alice", identity)).close()
    async with ServerApi(
        server.base_url, "alice", identity, server_name="pqcall.example.org"
    ) as api:
        with pytest.raises(ApiError) as caught:
            await api.login()
        assert caught.value.status == 401
        assert str(caught.value) == (
            "the server calls itself 'test.pqcall', but this phone pinned 'pqcall.example.org';"
            " not logging in (pin the new name if it was renamed)"
        )
        assert api.server_name == "pqcall.example.org"  # the pin never follows the server

        # and a registration signed for the pinned name does not verify there
        other = IdentityPrivateKey.generate()
        async with ServerApi(
            server.base_url, "bob", other, server_name="pqcall.example.org"
        ) as bob:
            with pytest.raises(ApiError) as caught:
                await bob.register(bundle_for(other, "bob"))
            assert (caught.value.status, str(caught.value)) == (
                400,
                "registration signature does not verify",
            )


@pytest.mark.parametrize("method", ["health", "register", "user"])
def test_an_unreachable_server_is_one_line(method: str) -> None:
    port = free_port()

    async def call() -> None:
        identity = IdentityPrivateKey.generate()
        url = f"http://127.0.0.1:{port}"
        async with ServerApi(url, "alice", identity, server_name=SERVER_NAME) as api:
            if method == "health":
                await api.health()
            elif method == "register":
                await api.register(bundle_for(identity, "alice"))
            else:
                await api.user("bob")  # the login's POST fails first

    with pytest.raises(ServerUnreachable) as caught:
        asyncio.run(call())
    assert (
        str(caught.value)
        == f"cannot reach the server at http://127.0.0.1:{port}: connection refused"
    )


@run_async
async def test_an_unknown_host_is_one_line() -> None:
    async with ServerApi(
        "http://pqcall.invalid:5001/", "alice", IdentityPrivateKey.generate()
    ) as api:
        with pytest.raises(ServerUnreachable) as caught:
            await api.health()
    assert (
        str(caught.value)
        == "cannot reach the server at http://pqcall.invalid:5001: host name not found"
    )


class _NotPqcall(http.server.BaseHTTPRequestHandler):
    """Something that answers HTTP, but not pqcall's API."""

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, "application/json", b'{"hello": "world"}')
        else:
            self._answer(404, "text/html", b"<html>not here</html>")

    def do_POST(self) -> None:
        self._answer(502, "text/html", b"<html>\n<h1>Bad Gateway</h1>\n</html>")

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def not_pqcall() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotPqcall)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@run_async
async def test_a_server_that_is_not_pqcall(not_pqcall: str) -> None:
    async with ServerApi(not_pqcall, "alice", IdentityPrivateKey.generate()) as api:
        with pytest.raises(ServerError) as caught:
            await api.health()
        assert str(caught.value) == (
            "the server's answer to GET /health is not valid: status: Field required"
        )
        with pytest.raises(ApiError) as error:
            await api.login()
        assert (error.value.status, str(error.value)) == (
            502,
            "the server answered 502 Bad Gateway",
        )
        with pytest.raises(ApiError) as error:
            await api.status(new_call_id())  # (the login's challenge gets the 502)
        assert error.value.status == 502


# ---------------------------------------------------------------- tokens


@run_async
async def test_an_expired_token_is_replaced_transparently(start_server) -> None:
    clock = FakeClock()
    with start_server(clock=clock) as running:
        async with (
            await new_account(running.base_url, "alice") as alice,
            await new_account(running.base_url, "bob"),
        ):
            await alice.user("bob")
            old = await alice.token()
            clock.advance(TOKEN_TTL_S + 1)  # the server's clock: the token is dead there
            assert (await alice.user("bob")).username == "bob"  # 401, log in, repeat
            assert alice.logins == 2
            assert await alice.token() != old
            # a POST is repeated too after the re-login (a 401 means nothing was done)
            clock.advance(TOKEN_TTL_S + 1)
            call = await alice.initiate(
                InitiateCall(call_id=new_call_id(), callee="bob", offer=OFFER)
            )
            assert call.state == "ringing"
            assert alice.logins == 3
            assert [c.call_id for c in await alice.history()] == [call.call_id]


@run_async
async def test_a_revoked_token_is_replaced_once(server: RunningServer) -> None:
    async with await new_account(server.base_url, "alice") as alice:
        token = await alice.token()
        async with httpx.AsyncClient(base_url=server.base_url) as other:
            revoked = await other.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
            assert revoked.status_code == 204
        # several requests see the same refused token: one login replaces it for all
        answers = await asyncio.gather(*(alice.presence(["alice"]) for _ in range(5)))
        assert all(answer[0].username == "alice" for answer in answers)
        assert alice.logins == 2

        await alice.logout()
        assert alice.logins == 2
        await alice.pending()  # logs in again
        assert alice.logins == 3


@run_async
async def test_rate_limit_says_when_to_retry(start_server) -> None:
    with start_server(rate_limit_scale=1.0) as running:
        async with ServerApi(running.base_url, "alice", IdentityPrivateKey.generate()) as api:
            outcomes = await asyncio.gather(
                *(api.health() for _ in range(60)), return_exceptions=True
            )
    refused = [o for o in outcomes if isinstance(o, ApiError)]
    assert refused, "60 requests at once must cross the burst of 40"
    assert all(e.status == 429 for e in refused)
    assert str(refused[0]).startswith("too many requests, retry in ")


# ---------------------------------------------------------------- keys, presence


@run_async
async def test_key_bundle_rotation(server: RunningServer) -> None:
    identity = IdentityPrivateKey.generate()
    async with await new_account(server.base_url, "alice", identity) as alice:
        newer = bundle_for(identity, "alice", created=1_800_000_000)
        assert (await alice.put_bundle(newer)).key_bundle == newer
        with pytest.raises(ApiError) as caught:
            await alice.put_bundle(bundle_for(identity, "alice", created=1_750_000_000))
        assert (caught.value.status, str(caught.value)) == (
            409,
            "key bundle is not newer than the current one",
        )


@run_async
async def test_presence(server: RunningServer) -> None:
    async with (
        await new_account(server.base_url, "alice") as alice,
        await new_account(server.base_url, "bob") as bob,
    ):
        assert await alice.presence([]) == []
        assert await alice.presence(["Bob"]) == []  # bob has not called alice yet
        await bob.initiate(InitiateCall(call_id=new_call_id(), callee="alice", offer=OFFER))
        [entry] = await alice.presence(["Bob", "nobody"])
        assert (entry.username, entry.online) == ("bob", False)
        async with bob.events() as stream:
            await stream.wait_connected(EVENT_TIMEOUT_S)
            [entry] = await alice.presence(["bob"])
            assert entry.online
        with pytest.raises(ApiError) as caught:
            await alice.presence(["x"])
        assert caught.value.status == 422


# ---------------------------------------------------------------- a whole call


@run_async
async def test_a_call_between_two_phones(server: RunningServer) -> None:
    async with (
        await new_account(server.base_url, "alice") as alice,
        await new_account(server.base_url, "bob") as bob,
        alice.events() as alice_events,
        bob.events() as bob_events,
    ):
        await alice_events.wait_connected(EVENT_TIMEOUT_S)
        await bob_events.wait_connected(EVENT_TIMEOUT_S)
        call_id = new_call_id()
        mine = [Candidate(host="192.0.2.10", port=40000)]

        # alice rings bob
        ringing = await alice.initiate(
            InitiateCall(call_id=call_id, callee="bob", offer=OFFER, candidates=mine)
        )
        assert (ringing.state, ringing.caller, ringing.callee) == ("ringing", "alice", "bob")
        incoming = await _expect(bob_events, EVENT_CALL_INCOMING)
        assert incoming.payload["call_id"] == call_id
        [pending] = await bob.pending()
        assert (pending.call_id, pending.offer) == (call_id, OFFER)

        # bob answers; alice gets the answer and confirms; bob gets the confirmation
        accepted = await bob.accept(AcceptCall(call_id=call_id, answer=ANSWER))
        assert accepted.state == "active"
        to_caller = await _expect(alice_events, EVENT_CALL_ACCEPTED)
        assert to_caller.payload["call_id"] == call_id
        assert (await alice.status(call_id)).answer == ANSWER
        await _expect(bob_events, EVENT_CALL_ACCEPTED)  # the view: its other phones stop ringing
        assert (
            await alice.confirm(ConfirmCall(call_id=call_id, confirm=CONFIRM))
        ).state == "active"
        await _expect(bob_events, EVENT_CALL_CONFIRMED)
        assert (await bob.status(call_id)).confirm == CONFIRM

        # alice hangs up; both hear of it
        ended = await alice.hangup(HangupCall(call_id=call_id))
        assert (ended.state, ended.ended_by) == ("ended", "caller")
        for stream in (alice_events, bob_events):
            event = await _expect(stream, EVENT_CALL_ENDED)
            assert (event.payload["reason"], event.payload["ended_by"]) == ("hangup", "caller")

        # an action the state table forbids is a 409 with its sentence
        with pytest.raises(ApiError) as caught:
            await bob.reject(RejectCall(call_id=call_id))
        assert caught.value.status == 409
        assert [c.call_id for c in await bob.history(limit=1)] == [call_id]


async def _expect(stream, event_type: str) -> Event:
    """The next event of ``event_type``, skipping presence."""
    while True:
        event = await next_event(stream)
        if event.type != "presence":
            assert event.type == event_type, event
            return event
