"""Issue 20 finding 8: anyone's presence, for anyone.

``GET /presence`` answered ``online`` and the exact ``last_seen`` for any name
to any account, so a stranger could follow when someone's phone is on. Now the
server answers only for people who let the asker see them, by having called
the asker or answered the asker's call, and rounds ``last_seen`` to 5
minutes. A stranger gets the answer it gets for a name without an account.
"""

from __future__ import annotations

from pqcall.server.presence import LAST_SEEN_ROUNDING_S
from pqcall.signaling.messages import EVENT_PRESENCE
from tests.server.conftest import (
    account,
    migrated_sqlite,
    server,
    server_db_url,
    start_server,
)
from tests.server.pushclient import QUIET_S, EventSocket, accept, hangup, initiate

__all__ = ["account", "migrated_sqlite", "server", "server_db_url", "start_server"]


def presence(phone, *names: str) -> list[dict[str, object]]:
    answer = phone.client.get("/presence", params={"names": ",".join(names)})
    assert answer.status_code == 200, answer.text
    users: list[dict[str, object]] = answer.json()["users"]
    return users


def test_a_stranger_learns_nothing_of_alice(server, account):
    alice, mallory, offline = account("alice"), account("mallory"), account("olivia")
    alice_phone = EventSocket(server, alice.token)  # alice is online
    assert presence(mallory, "alice") == presence(mallory, "olivia") == []
    assert presence(mallory, "alice") == presence(mallory, "nobody") == []
    # ringing her (unanswered, rejected) grants nothing either, now or when she comes and goes
    call_id, _ = initiate(mallory.client, "alice")
    hangup(mallory.client, call_id)
    assert presence(mallory, "alice", "olivia", "nobody") == []
    watcher = EventSocket(server, mallory.token)  # its backlog: the call it made, read here
    alice_phone.close()
    EventSocket(server, alice.token).close()
    watcher.assert_quiet(QUIET_S)
    watcher.close()
    assert offline.username == "olivia"


def test_those_alice_called_or_answered_see_her_rounded(server, account):
    alice, bob, carol = account("alice"), account("bob"), account("carol")
    initiate(alice.client, "bob")  # alice called bob: bob sees her
    call_id, _ = initiate(carol.client, "alice")  # carol called alice ...
    assert presence(carol, "alice") == []
    assert accept(alice.client, call_id).status_code == 200  # ... and alice answered
    alice_phone = EventSocket(server, alice.token)
    for watcher in (bob, carol):
        [seen] = presence(watcher, "alice")
        assert seen["online"] is True
        last_seen = float(seen["last_seen"])  # type: ignore[arg-type]
        assert last_seen % LAST_SEEN_ROUNDING_S == 0
        assert server.clock.now - LAST_SEEN_ROUNDING_S < last_seen <= server.clock.now
    # alice sees carol (carol called her) but not bob (he has neither called nor answered her)
    assert presence(alice, "bob") == []
    assert [user["username"] for user in presence(alice, "carol")] == ["carol"]
    # the pushed presence follows the same rule
    bob_events = EventSocket(server, bob.token)
    alice_phone.close()
    gone = bob_events.expect(EVENT_PRESENCE)["payload"]
    assert (gone["username"], gone["online"]) == ("alice", False)
    assert gone["last_seen"] % LAST_SEEN_ROUNDING_S == 0
    bob_events.close()
