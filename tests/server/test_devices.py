"""Accounts with devices (issue 22), server side: migration, login by device, device lists.

Real server, real crypto (``pqcall.crypto.account``), SQLite; the migration and
the storage checks run on PostgreSQL too (``db_url``).
"""

from __future__ import annotations

import hashlib

from alembic import command
from sqlalchemy import select, text

from pqcall.crypto.account import Device, DeviceList, SignedDeviceList
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.storage import Storage
from pqcall.server.storage.database import alembic_config, create_engine
from pqcall.server.storage.models import devices, tokens
from pqcall.signaling.messages import LOGIN_CONTEXT, b64decode, b64encode, login_signed_data
from tests.harness import run_async

from .conftest import SERVER_NAME, login, registration
from .pushclient import EventSocket


def device_login(client, device_key, username, device_id_hex=None):
    """Challenge and login signed by ``device_key``, naming ``device_id_hex`` if given."""
    challenge = b64decode(
        client.post("/auth/challenge", json={"username": username}).json()["challenge"]
    )
    body = {
        "username": username,
        "challenge": b64encode(challenge),
        "signature": b64encode(
            device_key.sign(
                login_signed_data(SERVER_NAME, username, challenge), context=LOGIN_CONTEXT
            )
        ),
    }
    if device_id_hex is not None:
        body["device_id"] = device_id_hex
    return client.post("/auth/login", json=body)


def signed_list(account_key, username, version, *device_keys, recovery=None, names=None):
    """The encoded SignedDeviceList of these device keys, signed by ``account_key``."""
    names = names or [f"device {i}" for i in range(len(device_keys))]
    listed = tuple(
        Device.of(key.public_key(), name) for key, name in zip(device_keys, names, strict=True)
    )
    return SignedDeviceList.sign(
        DeviceList(username, version, listed, recovery), account_key
    ).encode()


# ---------------------------------------------------------------- migration


@run_async
async def test_migration_makes_every_old_account_its_first_device(db_url):
    engine = create_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0003"))
            await connection.execute(
                text(
                    "INSERT INTO accounts (username, identity, created_at)"
                    " VALUES ('old', :identity, 5)"
                ),
                {"identity": b"old-identity"},
            )
            await connection.execute(
                text(
                    "INSERT INTO tokens (token_hash, account_id, expires_at)"
                    " SELECT :hash, id, 99 FROM accounts WHERE username = 'old'"
                ),
                {"hash": b"h" * 32},
            )
    finally:
        await engine.dispose()
    storage = await Storage.open(db_url)  # migrates to the newest schema
    try:
        old = await storage.accounts.get_account_by_name("old")
        assert old is not None
        first = hashlib.sha256(b"old-identity").digest()[:16]
        [device] = await storage.devices.list_devices(old.id)
        assert (device.device_id, device.name, device.public_key, device.added) == (
            first,
            "first device",
            b"old-identity",
            5,
        )
        listed = await storage.devices.device_list(old.id)
        assert (listed.signed, listed.version, listed.recovery_key) == (None, 0, None)
        async with storage.engine.connect() as connection:
            token_device = (await connection.execute(select(tokens.c.device_id))).scalar_one()
        assert token_device == first  # tokens of before belong to the first device
        # and an account made now has its first device too
        new = await storage.accounts.create_account("new", b"new-identity", b"b", 1, 7.0)
        async with storage.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(devices.c.device_id).where(devices.c.account_id == new.id)
                )
            ).all()
        assert rows == [(hashlib.sha256(b"new-identity").digest()[:16],)]
    finally:
        await storage.close()


# ---------------------------------------------------------------- login


def test_login_with_and_without_device_id(server):
    alice = IdentityPrivateKey.generate()
    first = hashlib.sha256(alice.public_key().encode()).hexdigest()[:32]
    with server.client() as client:
        assert client.post("/register", json=registration(alice, "alice")).status_code == 201
        assert login(client, alice, "alice").status_code == 200  # an older phone
        assert device_login(client, alice, "alice", first).status_code == 200
        stranger = IdentityPrivateKey.generate()
        refused = device_login(client, stranger, "alice", "ab" * 16)
        assert refused.status_code == 401
        assert refused.json() == {"error": "login signature does not verify"}
        # a device id the account has, signed by another key
        assert device_login(client, stranger, "alice", first).status_code == 401
        bad = device_login(client, alice, "alice", "XYZ")
        assert bad.status_code == 422


# ---------------------------------------------------------------- PUT /account/devices


def _token(answer):
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def _put(client, encoded):
    return client.put("/account/devices", json={"device_list": b64encode(encoded)})


def test_device_list_is_stored_served_and_second_device_logs_in(server, account):
    alice = account("alice")
    bob = account("bob")
    laptop = IdentityPrivateKey.generate()
    recovery = IdentityPrivateKey.generate().public_key()
    encoded = signed_list(
        alice.identity,
        "alice",
        1,
        alice.identity,
        laptop,
        recovery=recovery,
        names=["phone", "laptop"],
    )
    answer = _put(alice.client, encoded)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == 1 and b64decode(body["device_list"]) == encoded
    laptop_id = hashlib.sha256(laptop.public_key().encode()).hexdigest()[:32]
    assert sorted((d["device_id"], d["name"]) for d in body["devices"]) == sorted(
        [
            (laptop_id, "laptop"),
            (hashlib.sha256(alice.identity.public_key().encode()).hexdigest()[:32], "phone"),
        ]
    )
    # contacts get the list as stored, to verify under the key they pinned
    entry = bob.client.get("/users/alice").json()
    assert b64decode(entry["device_list"]) == encoded
    assert (
        SignedDeviceList.decode(b64decode(entry["device_list"]))
        .verify(alice.identity.public_key(), "alice")
        .recovery
        == recovery
    )
    with server.client() as client:
        token = _token(device_login(client, laptop, "alice", laptop_id))
    with server.client(token) as laptop_client:
        assert laptop_client.get("/account/devices").json()["version"] == 1


def test_device_list_checks(server, account):
    alice = account("alice")
    mallory = IdentityPrivateKey.generate()
    laptop = IdentityPrivateKey.generate()
    first = signed_list(alice.identity, "alice", 2, alice.identity, laptop)
    # signed by someone else (the server or a thief without the account key)
    forged = _put(alice.client, signed_list(mallory, "alice", 3, alice.identity, mallory))
    assert forged.status_code == 400
    assert forged.json() == {"error": "device list is not signed by the account key"}
    # another account's list, replayed
    other = _put(alice.client, signed_list(alice.identity, "bob", 3, alice.identity))
    assert other.status_code == 400
    assert "'bob'" in other.json()["error"]
    junk = _put(alice.client, b"not a device list")
    assert junk.status_code == 400 and "malformed" in junk.json()["error"]
    huge = alice.client.put("/account/devices", json={"device_list": "A" * 60_000})
    assert huge.status_code == 422
    assert _put(alice.client, first).status_code == 200
    # the version only grows: the same or an older list is refused (no rollback)
    again = _put(alice.client, first)
    assert again.status_code == 409
    assert again.json() == {"error": "device list version 2 is not newer than the stored version 2"}
    older = _put(alice.client, signed_list(alice.identity, "alice", 1, alice.identity))
    assert older.status_code == 409
    assert alice.client.get("/account/devices").json()["version"] == 2
    unauthenticated = server.client().put(
        "/account/devices", json={"device_list": b64encode(first)}
    )
    assert unauthenticated.status_code == 401


def test_a_removed_device_loses_its_token_and_socket_at_once(server, account):
    alice = account("alice")
    laptop = IdentityPrivateKey.generate()
    laptop_id = hashlib.sha256(laptop.public_key().encode()).hexdigest()[:32]
    assert (
        _put(
            alice.client, signed_list(alice.identity, "alice", 1, alice.identity, laptop)
        ).status_code
        == 200
    )
    with server.client() as client:
        token = _token(device_login(client, laptop, "alice", laptop_id))
    socket = EventSocket(server, token)
    phone_socket = EventSocket(server, alice.token)
    try:
        with server.client(token) as laptop_client:
            assert laptop_client.get("/account/devices").status_code == 200
            answer = _put(alice.client, signed_list(alice.identity, "alice", 2, alice.identity))
            assert answer.status_code == 200
            assert [d["name"] for d in answer.json()["devices"]] == ["device 0"]
            assert socket.wait_closed() == (4401, "logged out")
            assert laptop_client.get("/account/devices").status_code == 401
        with server.client() as client:
            assert device_login(client, laptop, "alice", laptop_id).status_code == 401
        # the device that stayed keeps its token and socket
        assert alice.client.get("/account/devices").status_code == 200
        phone_socket.assert_quiet()
    finally:
        socket.close()
        phone_socket.close()


def test_account_key_login_refused_once_the_list_leaves_it_out(server, account):
    # after linking, a list may name only device keys: the account key's own device is gone
    alice = account("alice")
    device = IdentityPrivateKey.generate()
    device_id = hashlib.sha256(device.public_key().encode()).hexdigest()[:32]
    assert _put(alice.client, signed_list(alice.identity, "alice", 1, device)).status_code == 200
    assert alice.client.get("/account/devices").status_code == 401  # its token went
    with server.client() as client:
        assert login(client, alice.identity, "alice").status_code == 401
        assert device_login(client, device, "alice", device_id).status_code == 200


def test_device_lists_are_rate_limited(start_server):
    with start_server(rate_limit_scale=1.0) as server:
        identity = IdentityPrivateKey.generate()
        with server.client() as client:
            assert client.post("/register", json=registration(identity, "alice")).status_code == 201
            token = _token(login(client, identity, "alice"))
        with server.client(token) as client:
            codes = [
                _put(client, signed_list(identity, "alice", version, identity)).status_code
                for version in range(1, 13)
            ]
    assert codes[:10] == [200] * 10
    assert codes[10] == 429


def test_the_recovery_key_is_set_once_and_only_recovery_replaces_it(server, account):
    # a thief with a linked device's account key must not lock the owner out of recovery
    alice = account("alice")
    words_key = IdentityPrivateKey.generate().public_key()
    thiefs_key = IdentityPrivateKey.generate().public_key()
    assert (
        _put(alice.client, signed_list(alice.identity, "alice", 1, alice.identity)).status_code
        == 200
    )
    first = signed_list(alice.identity, "alice", 2, alice.identity, recovery=words_key)
    assert _put(alice.client, first).status_code == 200  # set: none before
    for version, recovery in ((3, thiefs_key), (4, None)):
        changed = _put(
            alice.client,
            signed_list(alice.identity, "alice", version, alice.identity, recovery=recovery),
        )
        assert changed.status_code == 409
        assert changed.json() == {
            "error": "a device list cannot change or drop the recovery key;"
            " only a recovery replaces it"
        }
    same = signed_list(alice.identity, "alice", 5, alice.identity, recovery=words_key)
    assert _put(alice.client, same).status_code == 200
    assert alice.client.get("/account/devices").json()["version"] == 5
