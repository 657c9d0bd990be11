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
