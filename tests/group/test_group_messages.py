"""``POST /group/messages``: one request carries opaque messages for several members.

Against a real server over HTTP (accounts from the server tests' fixtures) and
its push stream: each message reaches its own recipient only, in order; a
recipient who is not joined is listed as refused while the rest go; a batch
over the caps, addressed to oneself, or from someone not joined is refused with
a 4xx and a reason. The batching in the phones is shown by
``test_group_phones.py::test_join_of_the_eighth_member_needs_few_requests``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from pqcall.client.group_outbox import batches
from pqcall.signaling.group_messages import (
    EVENT_GROUP_INVITE,
    EVENT_GROUP_MESSAGE,
    EVENT_GROUP_ROSTER,
    MAX_GROUP_BATCH_BYTES,
    MAX_GROUP_BATCH_MESSAGES,
    MAX_GROUP_MESSAGE_BYTES,
)

from ..server.conftest import (  # noqa: F401  (fixtures)
    Phone,
    RunningServer,
    account,
    migrated_sqlite,
    server,
    server_db_url,
    start_server,
)
from ..server.pushclient import EventSocket

CALL = "0f" * 16
ROSTER = (EVENT_GROUP_ROSTER, EVENT_GROUP_INVITE)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def item(to: str, body: bytes) -> dict[str, str]:
    return {"to": to, "body": b64(body)}


def post(phone: Phone, messages: list[dict[str, str]]) -> Any:
    return phone.client.post("/group/messages", json={"call_id": CALL, "messages": messages})


def test_one_request_carries_messages_to_several_members(
    server: RunningServer,  # noqa: F811  (the imported fixture)
    account: Callable[[str], Phone],  # noqa: F811
) -> None:
    alice, bob, carol, dave = (account(name) for name in ("alice", "bob", "carol", "dave"))
    invitees = [{"name": name, "signature": b64(b"s" * 64)} for name in ("bob", "carol", "dave")]
    created = alice.client.post("/group/create", json={"call_id": CALL, "invitees": invitees})
    assert created.status_code == 201, created.text
    for phone in (bob, carol):
        joined = phone.client.post("/group/accept", json={"call_id": CALL})
        assert joined.status_code == 200, joined.text
    bob_events = EventSocket(server, bob.token)
    carol_events = EventSocket(server, carol.token)
    try:
        sent = post(
            alice,
            [item("bob", b"one"), item("carol", b"two"), item("dave", b"x"), item("bob", b"3")],
        )
        assert sent.status_code == 200, sent.text
        answer = sent.json()
        assert answer["delivered"] == 3
        assert [(r["index"], r["to"]) for r in answer["refused"]] == [(2, "dave")]  # invited only
        bodies = []
        for _ in range(2):
            event = bob_events.expect(EVENT_GROUP_MESSAGE, ignore=ROSTER)
            assert event["payload"]["sender"] == "alice"
            bodies.append(event["payload"]["body"])
        assert bodies == [b64(b"one"), b64(b"3")]  # bob's two, in order
        event = carol_events.expect(EVENT_GROUP_MESSAGE, ignore=ROSTER)
        assert event["payload"]["body"] == b64(b"two")
        carol_events.assert_quiet(0.5)  # not bob's

        def refused(phone: Phone, messages: list[dict[str, str]], status: int) -> str:
            answer = post(phone, messages)
            assert answer.status_code == status, answer.text
            return str(answer.json())

        assert "yourself" in refused(alice, [item("bob", b"a"), item("alice", b"b")], 400)
        big = b"x" * (MAX_GROUP_BATCH_BYTES // 3 + 400)  # 3 over the cap, under 64 KiB base64
        assert "bytes together" in refused(alice, [item("bob", big)] * 3, 400)
        assert "larger than" in refused(
            alice, [item("bob", b"x" * MAX_GROUP_MESSAGE_BYTES)] * 4, 413
        )
        refused(alice, [item("bob", b"a")] * (MAX_GROUP_BATCH_MESSAGES + 1), 422)
        refused(alice, [], 422)
        assert "joined" in refused(dave, [item("bob", b"a")], 403)  # invited, not joined
        bob_events.assert_quiet(0.5)  # none of the refused batches reached anyone
    finally:
        bob_events.close()
        carol_events.close()


def test_batches_stay_within_the_caps_and_in_order() -> None:
    offer = b"o" * 6683  # a handshake offer
    items = [(f"u{i}", offer) for i in range(19)] + [(f"k{i}", b"k" * 100) for i in range(100)]
    split = batches(items)
    assert [entry for batch in split for entry in batch] == items
    for batch in split:
        assert 1 <= len(batch) <= MAX_GROUP_BATCH_MESSAGES
        assert sum(len(body) for _, body in batch) <= MAX_GROUP_BATCH_BYTES
    assert len(split) <= 6  # 127 KiB of offers in 40 KiB batches, then the small ones
