"""Recovery with the recovery words (issue 22), server side: real server, real crypto, SQLite.

After every device is lost, the recovery key (derived from the 24 words) signs
a new account key and device list; the server checks it against the recovery
key the old device list named, swaps the keys and logs every old device out.
"""

from __future__ import annotations

import hashlib

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.recovery import (
    RECOVER_CONTEXT,
    new_recovery_words,
    recover_signed_data,
    recovery_key,
)
from pqcall.server.routes.devices import RECOVER_REFUSED
from pqcall.signaling.messages import b64decode, b64encode

from .conftest import SERVER_NAME, bundle_for, login
from .pushclient import EventSocket
from .test_devices import device_login, signed_list


def _recover_body(recovery, username, new_account, new_device, *, list_signer=None):
    encoded = signed_list(list_signer or new_account, username, 1, new_device)
    identity = new_account.public_key().encode()
    signature = recovery.sign(
        recover_signed_data(SERVER_NAME, username, identity, encoded), context=RECOVER_CONTEXT
    )
    return {
        "username": username,
        "new_identity": b64encode(identity),
        "device_list": b64encode(encoded),
        "key_bundle": b64encode(bundle_for(new_account, username)),
        "signature": b64encode(signature),
    }


def _device_id(key):
    return hashlib.sha256(key.public_key().encode()).hexdigest()[:32]


def test_recovery_replaces_the_keys_and_logs_every_old_device_out(server, account):
    alice = account("alice")
    bob = account("bob")
    words = new_recovery_words()
    recovery = recovery_key(words)
    published = alice.client.put(
        "/account/devices",
        json={
            "device_list": b64encode(
                signed_list(
                    alice.identity, "alice", 3, alice.identity, recovery=recovery.public_key()
                )
            )
        },
    )
    assert published.status_code == 200
    socket = EventSocket(server, alice.token)
    try:
        # every home is gone: a new account key and device, the words typed again
        new_account, new_device = IdentityPrivateKey.generate(), IdentityPrivateKey.generate()
        with server.client() as client:
            answer = client.post(
                "/account/recover",
                json=_recover_body(recovery_key(words), "alice", new_account, new_device),
            )
            assert answer.status_code == 200, answer.text
            assert b64decode(answer.json()["identity"]) == new_account.public_key().encode()
            # the old device is out at once
            assert socket.wait_closed() == (4401, "logged out")
            assert alice.client.get("/account/devices").status_code == 401
            assert login(client, alice.identity, "alice").status_code == 401
            # the new device logs in; contacts see the new key (their phone warns loudly)
            assert (
                device_login(client, new_device, "alice", _device_id(new_device)).status_code == 200
            )
        entry = bob.client.get("/users/alice").json()
        assert b64decode(entry["identity"]) == new_account.public_key().encode()
        assert b64decode(entry["device_list"]) == b64decode(answer.json()["device_list"])
    finally:
        socket.close()


def test_recovery_is_refused_alike_for_every_wrong_case(server, account):
    alice = account("alice")
    carol = account("carol")  # never set a recovery key
    recovery = recovery_key(new_recovery_words())
    alice.client.put(
        "/account/devices",
        json={
            "device_list": b64encode(
                signed_list(
                    alice.identity, "alice", 1, alice.identity, recovery=recovery.public_key()
                )
            )
        },
    )
    new_account, new_device = IdentityPrivateKey.generate(), IdentityPrivateKey.generate()
    thief = recovery_key(new_recovery_words())
    with server.client() as client:
        for body in (
            _recover_body(thief, "alice", new_account, new_device),  # wrong words
            _recover_body(recovery, "nobody", new_account, new_device),  # no such name
            _recover_body(thief, "carol", new_account, new_device),  # no recovery key stored
        ):
            answer = client.post("/account/recover", json=body)
            assert answer.status_code == 403, answer.text
            assert answer.json() == {"error": RECOVER_REFUSED}
        # alice's recovery request replayed for another name: its list names alice
        replayed = {
            **_recover_body(recovery, "alice", new_account, new_device),
            "username": "carol",
        }
        answer = client.post("/account/recover", json=replayed)
        assert answer.status_code == 400
        assert answer.json() == {"error": "device list is for 'alice', not 'carol'"}
        # a list the new key did not sign
        forged = client.post(
            "/account/recover",
            json=_recover_body(
                recovery,
                "alice",
                new_account,
                new_device,
                list_signer=IdentityPrivateKey.generate(),
            ),
        )
        assert forged.status_code == 400
        assert forged.json() == {"error": "device list is not signed by the account key"}
    # nothing changed
    assert alice.client.get("/account/devices").status_code == 200
    assert carol.client.get("/account/devices").status_code == 200


def test_recovery_attempts_are_rate_limited(start_server):
    with start_server(rate_limit_scale=1.0) as server, server.client() as client:
        thief = recovery_key(new_recovery_words())
        body = _recover_body(
            thief, "alice", IdentityPrivateKey.generate(), IdentityPrivateKey.generate()
        )
        codes = [client.post("/account/recover", json=body).status_code for _ in range(6)]
    assert codes == [403] * 5 + [429]
