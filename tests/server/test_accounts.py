"""Registration, directory, key bundles and presence, on SQLite and PostgreSQL."""

import pytest

from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.presence import rounded_last_seen
from pqcall.signaling.messages import b64decode, b64encode

from .conftest import BUNDLE_CREATED, bundle_for, login, registration


def _register(server, identity, username="alice", **options):
    with server.client() as client:
        return client.post("/register", json=registration(identity, username, **options))


def test_register(server):
    identity = IdentityPrivateKey.generate()
    answer = _register(server, identity)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["username"] == "alice"
    assert b64decode(body["identity"]) == identity.public_key().encode()
    bundle = KeyBundle.decode(b64decode(body["key_bundle"]))
    bundle.verify(identity.public_key())
    assert body["created"] == pytest.approx(server.clock.now)


def test_lookup(server, account):
    alice = account("alice")
    bob = account("bob")
    answer = bob.client.get("/users/alice")
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"username", "identity", "key_bundle", "created", "device_list"}
    assert body["device_list"] is None  # never sent one (issue 22)
    assert b64decode(body["identity"]) == alice.identity.public_key().encode()
    file_key = KeyBundle.decode(b64decode(body["key_bundle"])).verify(alice.identity.public_key())
    assert file_key == alice.file_key.public_key()


def test_unknown_user(server, account):
    alice = account("alice")
    answer = alice.client.get("/users/nobody")
    assert answer.status_code == 404
    assert answer.json() == {"error": "no user named 'nobody'"}


def test_lookup_of_invalid_name(server, account):
    alice = account("alice")
    answer = alice.client.get("/users/a")
    assert answer.status_code == 422
    assert answer.json() == {"error": "username must be 3 to 32 characters"}


def test_normalization(server, account):
    identity = IdentityPrivateKey.generate()
    answer = _register(server, identity, "Alice")
    assert answer.status_code == 201, answer.text
    assert answer.json()["username"] == "alice"
    bob = account("bob")
    for spelling in ("alice", "ALICE", "\uff21lice"):
        found = bob.client.get(f"/users/{spelling}")
        assert found.status_code == 200, spelling
        assert found.json()["username"] == "alice"
    assert login(bob.client, identity, "aLiCe").status_code == 200


def test_name_squatting(server):
    first = IdentityPrivateKey.generate()
    assert _register(server, first, "alice").status_code == 201
    for spelling in ("alice", "ALICE"):
        answer = _register(server, IdentityPrivateKey.generate(), spelling)
        assert answer.status_code == 409
        assert answer.json() == {"error": "username is taken"}


def test_repeated_registration_is_idempotent(server):
    identity = IdentityPrivateKey.generate()
    body = registration(identity, "alice")
    with server.client() as client:
        first = client.post("/register", json=body)
        second = client.post("/register", json=body)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json() == first.json()


def test_repeated_registration_brings_a_newer_bundle(server):
    identity = IdentityPrivateKey.generate()
    assert _register(server, identity).status_code == 201
    newer = bundle_for(identity, "alice", BUNDLE_CREATED + 10)
    answer = _register(server, identity, bundle=newer)
    assert answer.status_code == 200
    assert b64decode(answer.json()["key_bundle"]) == newer
    older = bundle_for(identity, "alice", BUNDLE_CREATED - 10)
    answer = _register(server, identity, bundle=older)
    assert answer.status_code == 200
    assert b64decode(answer.json()["key_bundle"]) == newer


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"server_name": "other.server"},
            "registration signature does not verify",
            id="other-server",
        ),
        pytest.param(
            {"signed_name": "mallory"}, "registration signature does not verify", id="other-name"
        ),
    ],
)
def test_proof_of_possession(server, options, message):
    answer = _register(server, IdentityPrivateKey.generate(), **options)
    assert answer.status_code == 400
    assert answer.json() == {"error": message}


def test_signature_by_another_identity(server):
    identity = IdentityPrivateKey.generate()
    body = registration(IdentityPrivateKey.generate(), "alice")
    body["identity"] = b64encode(identity.public_key().encode())
    with server.client() as client:
        answer = client.post("/register", json=body)
    assert answer.status_code == 400
    assert answer.json() == {"error": "registration signature does not verify"}


def test_malformed_identity(server):
    body = registration(IdentityPrivateKey.generate(), "alice")
    body["identity"] = b64encode(b"PQ\x01\x01short")
    with server.client() as client:
        answer = client.post("/register", json=body)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "identity is malformed: identity public key has truncated ed25519 key"
    }


def test_bundle_of_another_identity(server):
    identity = IdentityPrivateKey.generate()
    other = bundle_for(IdentityPrivateKey.generate(), "alice")
    answer = _register(server, identity, bundle=other)
    assert answer.status_code == 400
    assert answer.json() == {"error": "key bundle is signed by another identity"}


def test_bundle_for_another_name(server):
    identity = IdentityPrivateKey.generate()
    answer = _register(server, identity, bundle=bundle_for(identity, "bob"))
    assert answer.status_code == 400
    assert answer.json() == {"error": "key bundle names 'bob', not 'alice'"}


def test_malformed_bundle(server):
    identity = IdentityPrivateKey.generate()
    answer = _register(server, identity, bundle=b"garbage")
    assert answer.status_code == 400
    assert answer.json() == {"error": "key bundle is malformed: not a pqcall key bundle"}


def test_bundle_created_out_of_range(server):
    identity = IdentityPrivateKey.generate()
    answer = _register(server, identity, bundle=bundle_for(identity, "alice", 2**64 - 1))
    assert answer.status_code == 400
    assert answer.json() == {"error": "key bundle creation time is out of range"}


@pytest.mark.parametrize(
    ("username", "message"),
    [
        pytest.param("al", "username: username must be 3 to 32 characters", id="short"),
        pytest.param(
            "\u0430lice",
            "username: username may contain only a-z, 0-9, '.', '_' and '-'",
            id="cyrillic",
        ),
        pytest.param(
            "-alice", "username: username must start and end with a letter or digit", id="edge"
        ),
    ],
)
def test_invalid_username(server, username, message):
    body = registration(IdentityPrivateKey.generate(), "alice")
    body["username"] = username
    with server.client() as client:
        answer = client.post("/register", json=body)
    assert answer.status_code == 422
    assert answer.json() == {"error": message}


def test_accounts_survive_restart(start_server):
    identity = IdentityPrivateKey.generate()
    with start_server() as first, first.client() as client:
        created = client.post("/register", json=registration(identity, "alice")).json()
    with start_server() as second, second.client() as client:
        token = login(client, identity, "alice").json()["token"]
        client.headers["Authorization"] = f"Bearer {token}"
        assert client.get("/users/alice").json() == created
        squat = client.post("/register", json=registration(IdentityPrivateKey.generate(), "alice"))
        assert squat.status_code == 409


# ---------------------------------------------------------------- key bundle rotation


def _new_bundle(phone, created, username=None, identity=None):
    return KeyBundle.create(
        identity or phone.identity,
        username or phone.username,
        FilePrivateKey.generate().public_key(),
        created,
    ).encode()


def test_rotate_bundle(server, account):
    alice = account("alice")
    bob = account("bob")
    newer = _new_bundle(alice, BUNDLE_CREATED + 1)
    answer = alice.client.put("/keys/bundle", json={"key_bundle": b64encode(newer)})
    assert answer.status_code == 200, answer.text
    assert b64decode(answer.json()["key_bundle"]) == newer
    assert b64decode(bob.client.get("/users/alice").json()["key_bundle"]) == newer
    again = alice.client.put("/keys/bundle", json={"key_bundle": b64encode(newer)})
    assert again.status_code == 200


def test_rotate_to_an_older_bundle(server, account):
    alice = account("alice")
    older = _new_bundle(alice, BUNDLE_CREATED)
    answer = alice.client.put("/keys/bundle", json={"key_bundle": b64encode(older)})
    assert answer.status_code == 409
    assert answer.json() == {"error": "key bundle is not newer than the current one"}


def test_rotate_to_a_bundle_of_another_identity(server, account):
    alice = account("alice")
    forged = _new_bundle(alice, BUNDLE_CREATED + 1, identity=IdentityPrivateKey.generate())
    answer = alice.client.put("/keys/bundle", json={"key_bundle": b64encode(forged)})
    assert answer.status_code == 400
    assert answer.json() == {"error": "key bundle is signed by another identity"}


def test_rotate_to_a_bundle_for_another_name(server, account):
    alice = account("alice")
    wrong = _new_bundle(alice, BUNDLE_CREATED + 1, username="bob")
    answer = alice.client.put("/keys/bundle", json={"key_bundle": b64encode(wrong)})
    assert answer.status_code == 400
    assert answer.json() == {"error": "key bundle names 'bob', not 'alice'"}


# ---------------------------------------------------------------- presence


def test_presence(server, account):
    alice = account("alice")
    bob = account("bob")
    context = server.app.state.context
    # only those who called alice (or answered her) show her their presence
    assert alice.client.get("/presence", params={"names": "bob"}).json() == {"users": []}
    call = {"call_id": "ab" * 16, "callee": "alice", "offer": b64encode(b"offer")}
    assert bob.client.post("/call/initiate", json=call).status_code == 201
    answer = alice.client.get("/presence", params={"names": "bob, alice,nobody,BOB"})
    assert answer.status_code == 200
    users = answer.json()["users"]
    assert [user["username"] for user in users] == ["alice", "bob"]
    assert all(user["online"] is False for user in users)
    assert users[1]["last_seen"] == rounded_last_seen(server.clock.now)

    bob_id = server_account_id(server, "bob")
    assert context.presence.connect(bob_id)
    online = alice.client.get("/presence", params={"names": "bob"}).json()["users"]
    assert online == [
        {"username": "bob", "online": True, "last_seen": rounded_last_seen(server.clock.now)}
    ]
    assert context.presence.disconnect(bob_id)
    assert (
        bob.client.get("/presence", params={"names": "bob"}).json()["users"][0]["online"] is False
    )


def server_account_id(server, username):
    import asyncio

    from pqcall.server.storage import Storage

    async def find():
        storage = await Storage.open(server.settings.db_url, migrate=False)
        try:
            found = await storage.accounts.get_account_by_name(username)
            assert found is not None
            return found.id
        finally:
            await storage.close()

    return asyncio.run(find())


@pytest.mark.parametrize(
    ("names", "message"),
    [
        pytest.param("ab", "names: username must be 3 to 32 characters", id="invalid"),
        pytest.param(
            ",".join(f"user{i}" for i in range(101)),
            "names: at most 100 usernames per request",
            id="too-many",
        ),
    ],
)
def test_presence_refuses(server, account, names, message):
    alice = account("alice")
    answer = alice.client.get("/presence", params={"names": names})
    assert answer.status_code == 422
    assert answer.json() == {"error": message}


def test_presence_needs_names(server, account):
    alice = account("alice")
    answer = alice.client.get("/presence")
    assert answer.status_code == 422
    assert answer.json() == {"error": "query parameter names: field required"}


def test_presence_of_nobody(server, account):
    alice = account("alice")
    assert alice.client.get("/presence", params={"names": ","}).json() == {"users": []}
