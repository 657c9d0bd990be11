"""Events of an account with several devices (issue 22): every device gets every event.

One device's ack must not delete an event another device has not seen (acks
are per device); a call answered on one device tells the others
(``call.answered_elsewhere``) so they stop ringing. Real server, real sockets;
the ack test on SQLite and PostgreSQL (their inserts differ).
"""

from __future__ import annotations

import hashlib
import time

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.storage import Storage
from pqcall.server.storage.device_store import NewDevice, device_id_of
from pqcall.signaling.messages import EVENT_CALL_ANSWERED_ELSEWHERE, b64encode
from tests.harness import run_async, scaled, wait_until

from .pushclient import EventSocket, accept, initiate, reject
from .test_devices import device_login, signed_list

ACK_SETTLE_S = scaled(1.0)  # well past the hub's ack flush (0.2 s): a delete would have happened


def _two_devices(server, account, name="alice"):
    """An account with a phone (its first device) and a laptop, both logged in."""
    phone = account(name)
    laptop = IdentityPrivateKey.generate()
    listed = signed_list(phone.identity, name, 1, phone.identity, laptop, names=["phone", "laptop"])
    answer = phone.client.put("/account/devices", json={"device_list": b64encode(listed)})
    assert answer.status_code == 200, answer.text
    laptop_id = hashlib.sha256(laptop.public_key().encode()).hexdigest()[:32]
    with server.client() as client:
        logged_in = device_login(client, laptop, name, laptop_id)
    assert logged_in.status_code == 200, logged_in.text
    return phone, logged_in.json()["token"], laptop_id


def _backlog_seqs(server, token, resume):
    socket = EventSocket(server, token, resume=resume)
    try:
        return [event["seq"] for event in socket.backlog]
    finally:
        socket.close()


def test_one_devices_ack_leaves_the_event_for_the_other(db_url, server, account):
    phone, laptop_token, _ = _two_devices(server, account)
    bob = account("bob")
    phone_socket = EventSocket(server, phone.token)
    laptop_socket = EventSocket(server, laptop_token)
    initiate(bob.client, "alice")
    seq = phone_socket.expect("call.incoming")["seq"]
    assert laptop_socket.expect("call.incoming")["seq"] == seq
    laptop_socket.close()  # the laptop drops off before it acks
    phone_socket.ack(seq)
    time.sleep(ACK_SETTLE_S)
    phone_socket.close()
    # the phone resumes saying it has everything through seq: still not the laptop's ack
    assert _backlog_seqs(server, phone.token, seq) == []
    time.sleep(ACK_SETTLE_S)
    # the laptop comes back and gets what it missed
    assert _backlog_seqs(server, laptop_token, seq - 1) == [seq]
    # once both devices have it, it goes
    laptop_again = EventSocket(server, laptop_token, resume=seq - 1)
    laptop_again.ack(seq)
    laptop_again.close()
    wait_until(
        lambda: _backlog_seqs(server, phone.token, seq - 1) == [],
        "the event acked by both devices to be deleted",
    )


def test_a_single_device_account_acks_as_before(server, account):
    alice = account("alice")
    bob = account("bob")
    socket = EventSocket(server, alice.token)
    initiate(bob.client, "alice")
    seq = socket.expect("call.incoming")["seq"]
    socket.ack(seq)
    socket.close()
    wait_until(lambda: _backlog_seqs(server, alice.token, seq - 1) == [], "the ack to delete it")


def test_answer_on_one_device_stops_the_others_ringing(server, account):
    phone, laptop_token, laptop_id = _two_devices(server, account)
    bob = account("bob")
    phone_socket = EventSocket(server, phone.token)
    laptop_socket = EventSocket(server, laptop_token)
    try:
        call_id, _ = initiate(bob.client, "alice")
        phone_socket.expect("call.incoming")
        laptop_socket.expect("call.incoming")
        with server.client(laptop_token) as laptop_client:
            assert accept(laptop_client, call_id).status_code == 200
        phone_socket.expect("call.accepted")
        elsewhere = phone_socket.expect(EVENT_CALL_ANSWERED_ELSEWHERE)
        assert elsewhere["payload"] == {
            "call_id": call_id,
            "device_id": laptop_id,
            "device_name": "laptop",
        }
        # the phone can no longer answer or decline it
        assert accept(phone.client, call_id).status_code == 409
        assert reject(phone.client, call_id).status_code == 409
    finally:
        phone_socket.close()
        laptop_socket.close()


@run_async
async def test_per_device_acks_in_storage(db_url):
    storage = await Storage.open(db_url)
    try:
        alice = await storage.accounts.create_account("alice", b"A", b"b", 1, 0.0)
        phone, laptop = device_id_of(b"A"), device_id_of(b"L")
        both = [NewDevice(phone, "phone", b"A"), NewDevice(laptop, "laptop", b"L")]
        await storage.devices.put_device_list(alice.id, b"v1", 1, both, None, 0.0)
        seqs = [await storage.events.add_event(alice.id, "t", {"n": n}, 0.0) for n in range(3)]
        events = storage.events
        # the phone acks everything, twice (two sockets of one device): nothing goes
        assert await events.acknowledge({(alice.id, phone, seq) for seq in seqs}) == 0
        assert await events.acknowledge({(alice.id, phone, seq) for seq in seqs}) == 0
        # the laptop resumed through the first and acks the second: those two go
        went = await events.acknowledge(
            {(alice.id, laptop, seqs[1])}, {(alice.id, laptop): seqs[0]}
        )
        assert went == 2
        assert [e.seq for e in await events.events_after(alice.id, 0)] == [seqs[2]]
        # the laptop leaves the list: the last event was kept only for it
        await storage.devices.put_device_list(alice.id, b"v2", 2, both[:1], None, 0.0)
        assert await events.events_after(alice.id, 0) == []
        # an account of one device: an ack deletes at once, as before devices
        bob = await storage.accounts.create_account("bob", b"B", b"b", 1, 0.0)
        seq = await events.add_event(bob.id, "t", {}, 0.0)
        assert await events.acknowledge({(bob.id, device_id_of(b"B"), seq)}) == 1
    finally:
        await storage.close()
