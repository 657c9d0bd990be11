"""Challenge-response login and bearer tokens (on SQLite; storage is tested on both databases)."""

import asyncio
import hashlib
import secrets

import pytest
from sqlalchemy import select

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.storage.database import create_engine
from pqcall.server.storage.models import tokens
from pqcall.signaling.messages import LOGIN_CONTEXT, b64decode, b64encode, login_signed_data

from .conftest import SERVER_NAME, login, registration


def _challenge(client, username="alice"):
    answer = client.post("/auth/challenge", json={"username": username})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _login_body(identity, challenge, username="alice", server_name=SERVER_NAME):
    signature = identity.sign(
        login_signed_data(server_name, username, challenge), context=LOGIN_CONTEXT
    )
    return {
        "username": username,
        "challenge": b64encode(challenge),
        "signature": b64encode(signature),
    }


@pytest.fixture
def alice(server):
    identity = IdentityPrivateKey.generate()
    with server.client() as client:
        assert client.post("/register", json=registration(identity, "alice")).status_code == 201
    return identity


def test_login(server, alice):
    with server.client() as client:
        issued = _challenge(client)
        assert len(b64decode(issued["challenge"])) == 32
        assert issued["expires"] == pytest.approx(server.clock.now + 60)
        assert issued["server_name"] == SERVER_NAME
        answer = client.post("/auth/login", json=_login_body(alice, b64decode(issued["challenge"])))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(b64decode(body["token"])) == 32
    assert body["expires"] == pytest.approx(server.clock.now + 3600)
    with server.client(body["token"]) as client:
        assert client.get("/users/alice").status_code == 200


def test_login_with_other_case_name(server, alice):
    with server.client() as client:
        assert login(client, alice, "ALICE").status_code == 200


def test_challenge_for_unknown_user(server):
    # answered like a known name, so it tells nobody who has an account (issue 20, finding 11)
    with server.client() as client:
        answer = client.post("/auth/challenge", json={"username": "nobody"})
    assert answer.status_code == 200
    assert len(b64decode(answer.json()["challenge"])) == 32


def test_login_for_unknown_user(server):
    with server.client() as client:
        challenge = b64decode(_challenge(client, "nobody")["challenge"])
        answer = client.post(
            "/auth/login", json=_login_body(IdentityPrivateKey.generate(), challenge, "nobody")
        )
    assert answer.status_code == 401
    assert answer.json() == {"error": "login signature does not verify"}


def test_challenge_is_single_use(server, alice):
    with server.client() as client:
        challenge = b64decode(_challenge(client)["challenge"])
        body = _login_body(alice, challenge)
        assert client.post("/auth/login", json=body).status_code == 200
        replay = client.post("/auth/login", json=body)
    assert replay.status_code == 401
    assert replay.json() == {"error": "challenge was already used; request a new one"}


def test_failed_login_burns_the_challenge(server, alice):
    mallory = IdentityPrivateKey.generate()
    with server.client() as client:
        challenge = b64decode(_challenge(client)["challenge"])
        forged = client.post("/auth/login", json=_login_body(mallory, challenge))
        assert forged.status_code == 401
        assert forged.json() == {"error": "login signature does not verify"}
        honest = client.post("/auth/login", json=_login_body(alice, challenge))
    assert honest.status_code == 401
    assert honest.json()["error"] == "challenge was already used; request a new one"


def test_challenge_expires(server, alice):
    with server.client() as client:
        challenge = b64decode(_challenge(client)["challenge"])
        server.clock.advance(60.5)
        answer = client.post("/auth/login", json=_login_body(alice, challenge))
    assert answer.status_code == 401
    assert answer.json() == {"error": "challenge has expired; request a new one"}


def test_unknown_challenge(server, alice):
    with server.client() as client:
        answer = client.post("/auth/login", json=_login_body(alice, secrets.token_bytes(32)))
    assert answer.status_code == 401
    assert answer.json() == {"error": "challenge is unknown; request a new one"}


def test_challenge_of_another_user(server, alice):
    bob = IdentityPrivateKey.generate()
    with server.client() as client:
        assert client.post("/register", json=registration(bob, "bob")).status_code == 201
        challenge = b64decode(_challenge(client, "alice")["challenge"])
        answer = client.post("/auth/login", json=_login_body(bob, challenge, "bob"))
    assert answer.status_code == 401
    assert answer.json()["error"] == "challenge is unknown; request a new one"


def test_login_for_another_server_is_refused(server, alice):
    with server.client() as client:
        challenge = b64decode(_challenge(client)["challenge"])
        answer = client.post(
            "/auth/login", json=_login_body(alice, challenge, server_name="other.server")
        )
    assert answer.status_code == 401
    assert answer.json() == {"error": "login signature does not verify"}


def test_login_signature_with_wrong_context(server, alice):
    with server.client() as client:
        challenge = b64decode(_challenge(client)["challenge"])
        body = _login_body(alice, challenge)
        body["signature"] = b64encode(
            alice.sign(login_signed_data(SERVER_NAME, "alice", challenge), context=b"other")
        )
        answer = client.post("/auth/login", json=body)
    assert answer.status_code == 401


def test_malformed_signature(server, alice):
    with server.client() as client:
        challenge = b64decode(_challenge(client)["challenge"])
        body = _login_body(alice, challenge)
        body["signature"] = b64encode(b"not a signature")
        answer = client.post("/auth/login", json=body)
    assert answer.status_code == 401
    assert answer.json() == {"error": "login signature does not verify"}


def test_short_challenge_is_a_schema_error(server, alice):
    with server.client() as client:
        answer = client.post("/auth/login", json=_login_body(alice, bytes(16)))
    assert answer.status_code == 422
    assert answer.json() == {"error": "challenge: must be exactly 32 bytes"}


# ---------------------------------------------------------------- tokens

AUTHENTICATED = [
    pytest.param("GET", "/users/alice", id="users"),
    pytest.param("PUT", "/keys/bundle", id="keys-bundle"),
    pytest.param("GET", "/presence?names=alice", id="presence"),
    pytest.param("POST", "/auth/logout", id="logout"),
]

BAD_CREDENTIALS = [
    pytest.param(None, "missing Authorization: Bearer token; log in first", id="missing"),
    pytest.param("Basic YWxpY2U6eA==", "Authorization header must be 'Bearer <token>'", id="basic"),
    pytest.param("Bearer", "Authorization header must be 'Bearer <token>'", id="empty"),
    pytest.param("Bearer !!!", "bearer token is not valid", id="not-base64"),
    pytest.param("Bearer AAAA", "bearer token is not valid", id="short"),
    pytest.param(f"Bearer {b64encode(bytes(32))}", "bearer token is not valid", id="unknown"),
]


@pytest.mark.parametrize(("header", "message"), BAD_CREDENTIALS)
def test_authenticated_endpoints_refuse_bad_tokens(server, account, header, message):
    account("alice")
    headers = {} if header is None else {"Authorization": header}
    with server.client() as client:
        for param in AUTHENTICATED:
            method, path = param.values
            answer = client.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, path)
            assert answer.json() == {"error": message}
            assert answer.headers["www-authenticate"] == "Bearer"


def test_authenticated_endpoints_refuse_expired_tokens(server, account):
    alice = account("alice")
    server.clock.advance(3600)
    for param in AUTHENTICATED:
        method, path = param.values
        answer = alice.client.request(method, path)
        assert answer.status_code == 401, (method, path)
        assert answer.json() == {"error": "bearer token has expired; log in again"}


def test_every_secured_operation_refuses_without_token(server):
    spec = server.client().get("/openapi.json").json()
    secured = [
        (method, path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    ]
    assert len(secured) >= 4
    with server.client() as client:
        for method, path in secured:
            answer = client.request(method.upper(), path.replace("{name}", "alice"))
            assert answer.status_code == 401, (method, path, answer.text)


def test_token_valid_until_expiry(server, account):
    alice = account("alice")
    server.clock.advance(3599)
    assert alice.client.get("/users/alice").status_code == 200


def test_logout_revokes_the_token(server, account):
    alice = account("alice")
    assert alice.client.post("/auth/logout").status_code == 204
    answer = alice.client.get("/users/alice")
    assert answer.status_code == 401
    assert answer.json() == {"error": "bearer token is not valid"}


def test_tokens_are_stored_hashed(server, account):
    alice = account("alice")
    token = b64decode(alice.token)

    async def stored():
        engine = create_engine(server.settings.db_url)
        try:
            async with engine.connect() as connection:
                return list((await connection.execute(select(tokens.c.token_hash))).scalars())
        finally:
            await engine.dispose()

    hashes = asyncio.run(stored())
    assert hashlib.sha256(token).digest() in hashes
    assert token not in hashes


def test_token_survives_restart(start_server):
    identity = IdentityPrivateKey.generate()
    with start_server() as first, first.client() as client:
        assert client.post("/register", json=registration(identity, "alice")).status_code == 201
        token = login(client, identity, "alice").json()["token"]
        clock = first.clock
    with start_server(clock=clock) as second, second.client(token) as client:
        answer = client.get("/users/alice")
    assert answer.status_code == 200


def test_login_updates_last_seen(server, account):
    alice = account("alice")
    answer = alice.client.get("/presence", params={"names": "alice"})
    assert answer.json()["users"][0]["last_seen"] == pytest.approx(server.clock.now)
