"""The call lifecycle over real HTTP and WebSockets: flow, authorization, the state table, races."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import httpx
import pytest

from pqcall.signaling.callstate import TRANSITIONS, Action, Party, State
from pqcall.signaling.messages import (
    EVENT_CALL_ACCEPTED,
    EVENT_CALL_CONFIRMED,
    EVENT_CALL_ENDED,
    EVENT_CALL_FAILED,
    EVENT_CALL_INCOMING,
    EVENT_CALL_MISSED,
    EVENT_CALL_REJECTED,
    EVENT_PRESENCE,
    CallDetail,
    CallView,
)

from .conftest import RunningServer
from .pushclient import (
    ANSWER,
    CONFIRM,
    EVENT_TIMEOUT_S,
    OFFER,
    EventSocket,
    accept,
    confirm,
    hangup,
    initiate,
    new_call_id,
    reject,
)

SWEEP_S = 0.05
RING_TIMEOUT_S = 45.0
VANISH_GRACE_S = 60.0


@pytest.fixture
def server(
    start_server: Callable[..., AbstractContextManager[RunningServer]],
) -> Iterator[RunningServer]:
    """A server without rate limits (the tests send many requests from one address)."""
    with start_server(rate_limit_scale=0, sweep_interval_s=SWEEP_S) as running:
        yield running


def wait_for_state(client: httpx.Client, call_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while True:
        detail = client.get(f"/call/status/{call_id}").json()
        if detail["state"] == state or time.monotonic() > deadline:
            assert detail["state"] == state, detail
            return dict(detail)
        time.sleep(SWEEP_S)


# ---------------------------------------------------------------- the whole flow


def test_call_flow_is_pushed_without_polling(server, account):
    alice, bob = account("alice"), account("bob")
    alice_events = EventSocket(server, alice.token)
    bob_events = EventSocket(server, bob.token)

    # initiate: bob's socket has the call before any request of his
    call_id, answer = initiate(
        alice.client, "Bob", candidates=[{"host": "192.0.2.10", "port": 40000}]
    )
    sent = time.monotonic()
    assert answer.status_code == 201, answer.text
    assert CallView.model_validate(answer.json()).state is State.RINGING
    incoming = bob_events.expect(EVENT_CALL_INCOMING)
    assert time.monotonic() - sent < 1.0
    call = CallDetail.model_validate(incoming["payload"])
    assert (call.call_id, call.caller, call.callee, call.state) == (
        call_id,
        "alice",
        "bob",
        State.RINGING,
    )
    assert call.offer == OFFER
    assert call.answer is None and call.relay is None
    assert call.caller_seen_address is not None
    seen_host = call.caller_seen_address.rpartition(":")[0]
    assert seen_host == "127.0.0.1"
    assert [(c.host, c.port) for c in call.caller_candidates] == [
        ("192.0.2.10", 40000),
        ("127.0.0.1", 40000),  # server-reflexive: the address the server saw, the phone's port
    ]

    # accept: the callee's answer carries its own relay grant, the caller's event its own
    accepted = accept(bob.client, call_id, candidates=[{"host": "198.51.100.7", "port": 41000}])
    assert accepted.status_code == 200, accepted.text
    bob_view = CallDetail.model_validate(accepted.json())
    assert bob_view.state is State.ACTIVE and bob_view.answered is not None
    assert bob_view.relay is not None and bob_view.relay.host == "127.0.0.1"
    event = alice_events.expect(EVENT_CALL_ACCEPTED)
    alice_view = CallDetail.model_validate(event["payload"])
    assert alice_view.answer == ANSWER
    assert [(c.host, c.port) for c in alice_view.callee_candidates] == [
        ("198.51.100.7", 41000),
        ("127.0.0.1", 41000),
    ]
    assert alice_view.relay is not None
    assert alice_view.relay.port == bob_view.relay.port
    assert alice_view.relay.token != bob_view.relay.token
    echo = bob_events.expect(EVENT_CALL_ACCEPTED)  # for bob's other phones: stop ringing
    assert "relay" not in echo["payload"] and "answer" not in echo["payload"]

    # confirm: pushed to the callee
    confirmed = confirm(alice.client, call_id)
    assert confirmed.status_code == 200, confirmed.text
    event = bob_events.expect(EVENT_CALL_CONFIRMED)
    assert CallDetail.model_validate(event["payload"]).confirm == CONFIRM

    # status: each party sees everything, and only its own relay token
    alice_status = CallDetail.model_validate(alice.client.get(f"/call/status/{call_id}").json())
    bob_status = CallDetail.model_validate(bob.client.get(f"/call/status/{call_id}").json())
    assert (alice_status.offer, alice_status.answer, alice_status.confirm) == (
        OFFER,
        ANSWER,
        CONFIRM,
    )
    assert alice_status.relay == alice_view.relay
    assert bob_status.relay is not None and bob_status.relay.token == bob_view.relay.token

    # hangup: both are told who ended it and why; the relay is released
    ended = hangup(alice.client, call_id)
    assert ended.status_code == 200, ended.text
    for events in (bob_events, alice_events):
        view = CallView.model_validate(events.expect(EVENT_CALL_ENDED)["payload"])
        assert (view.state, view.reason, view.ended_by) == (State.ENDED, "hangup", "caller")
        assert view.ended is not None
    assert CallDetail.model_validate(bob.client.get(f"/call/status/{call_id}").json()).relay is None

    # history, newest first
    server.clock.advance(1)
    initiate(bob.client, "alice")
    for phone in (alice, bob):
        history = phone.client.get("/calls/history").json()["calls"]
        assert [entry["state"] for entry in history] == ["ringing", "ended"]
        assert history[1]["call_id"] == call_id
    assert len(alice.client.get("/calls/history", params={"limit": 1}).json()["calls"]) == 1
    alice_events.close()
    bob_events.close()


@pytest.mark.parametrize(
    ("steps", "event_type", "state", "reason", "ended_by"),
    [
        pytest.param(["caller hangup"], EVENT_CALL_MISSED, "missed", "cancelled", "caller"),
        pytest.param(["callee hangup"], EVENT_CALL_REJECTED, "rejected", "declined", "callee"),
        pytest.param(["callee busy"], EVENT_CALL_REJECTED, "rejected", "busy", "callee"),
        pytest.param(["caller failed"], EVENT_CALL_FAILED, "failed", "failed", "caller"),
        pytest.param(["accept", "callee hangup"], EVENT_CALL_ENDED, "ended", "hangup", "callee"),
        pytest.param(["accept", "callee failed"], EVENT_CALL_FAILED, "failed", "failed", "callee"),
    ],
)
def test_endings_are_pushed_to_both(server, account, steps, event_type, state, reason, ended_by):
    alice, bob = account("alice"), account("bob")
    call_id, _ = initiate(alice.client, "bob")
    actions = {
        "accept": partial(accept, bob.client, call_id),
        "caller hangup": partial(hangup, alice.client, call_id),
        "callee hangup": partial(hangup, bob.client, call_id),
        "callee busy": partial(reject, bob.client, call_id, "busy"),
        "caller failed": partial(hangup, alice.client, call_id, "failed"),
        "callee failed": partial(hangup, bob.client, call_id, "failed"),
    }
    for step in steps:
        answer = actions[step]()
        assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == state
    for phone in (alice, bob):
        events = EventSocket(phone.server, phone.token)
        view = [e for e in events.backlog if e["type"] != EVENT_PRESENCE][-1]
        assert view["type"] == event_type
        assert (view["payload"]["reason"], view["payload"]["ended_by"]) == (reason, ended_by)
        events.close()


def test_initiate_refusals(server, account):
    alice, _ = account("alice"), account("bob")
    unknown = initiate(alice.client, "nobody")[1]
    assert (unknown.status_code, unknown.json()) == (404, {"error": "no user named 'nobody'"})
    myself = initiate(alice.client, "ALICE")[1]
    assert (myself.status_code, myself.json()) == (400, {"error": "you cannot call yourself"})
    call_id, first = initiate(alice.client, "bob")
    assert first.status_code == 201
    again = initiate(alice.client, "bob", call_id=call_id)[1]
    assert (again.status_code, again.json()) == (409, {"error": "call id is already in use"})
    bad_id = initiate(alice.client, "bob", call_id="not-hex")[1]
    assert bad_id.status_code == 422
    assert bad_id.json()["error"].startswith("call_id: string should match pattern")
    too_many = initiate(alice.client, "bob", candidates=[{"host": "192.0.2.1", "port": 1}] * 9)[1]
    assert too_many.status_code == 422


# ---------------------------------------------------------------- who may act


def call_actions(call_id: str) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    return {
        "accept": lambda c: accept(c, call_id),
        "reject": lambda c: reject(c, call_id),
        "confirm": lambda c: confirm(c, call_id),
        "hangup": lambda c: hangup(c, call_id),
        "fail": lambda c: hangup(c, call_id, "failed"),
        "status": lambda c: c.get(f"/call/status/{call_id}"),
    }


def test_strangers_and_anonymous_are_refused(server, account):
    alice, bob, mallory = account("alice"), account("bob"), account("mallory")
    call_id, _ = initiate(alice.client, "bob")
    with server.client() as anonymous, server.client("A" * 43) as forged:
        for name, act in call_actions(call_id).items():
            refused = act(mallory.client)
            assert (refused.status_code, refused.json()) == (
                403,
                {"error": "not a party to this call"},
            ), name
            for client, message in (
                (anonymous, "missing Authorization: Bearer token; log in first"),
                (forged, "bearer token is not valid"),
            ):
                answer = act(client)
                assert (answer.status_code, answer.json()) == (401, {"error": message}), name
        for path in ("/call/pending/bob", "/calls/history"):
            assert anonymous.get(path).status_code == 401
        _, unauthorized = initiate(anonymous, "bob")
        assert unauthorized.status_code == 401
    for name, act in call_actions(new_call_id()).items():
        missing = act(mallory.client)
        assert (missing.status_code, missing.json()) == (404, {"error": "no such call"}), name
    # nothing mallory did changed the call
    assert bob.client.get(f"/call/status/{call_id}").json()["state"] == "ringing"
    # pending calls: only one's own
    snooping = mallory.client.get("/call/pending/bob")
    assert (snooping.status_code, snooping.json()) == (
        403,
        {"error": "you can only list your own pending calls"},
    )
    assert mallory.client.get("/calls/history").json() == {"calls": []}


def test_pending_calls(server, account):
    alice, bob, carol = account("alice"), account("bob"), account("carol")
    first, _ = initiate(alice.client, "bob", candidates=[{"host": "192.0.2.1", "port": 5000}])
    server.clock.advance(1)
    second, _ = initiate(carol.client, "bob")
    pending = bob.client.get("/call/pending/BOB")
    assert pending.status_code == 200
    calls = [CallDetail.model_validate(call) for call in pending.json()["calls"]]
    assert [call.call_id for call in calls] == [first, second]
    assert calls[0].offer == OFFER and calls[0].caller == "alice"
    assert len(calls[0].caller_candidates) == 2
    accept(bob.client, first)
    assert [c["call_id"] for c in bob.client.get("/call/pending/bob").json()["calls"]] == [second]
    assert alice.client.get("/call/pending/alice").json() == {"calls": []}
    assert bob.client.get("/call/pending/x").status_code == 422


# ---------------------------------------------------------------- the state table


API_ACTIONS = {
    Action.ACCEPT: lambda client, call_id: accept(client, call_id),
    Action.REJECT: lambda client, call_id: reject(client, call_id),
    Action.CONFIRM: lambda client, call_id: confirm(client, call_id),
    Action.HANGUP: lambda client, call_id: hangup(client, call_id),
    Action.FAIL: lambda client, call_id: hangup(client, call_id, "failed"),
}
"""Every action a party can take through the API (timeout and vanish are the server's)."""

ROUTES_TO = {  # how to drive a fresh call into each state: (party, action) steps
    State.RINGING: [],
    State.ACTIVE: [(Party.CALLEE, Action.ACCEPT)],
    State.REJECTED: [(Party.CALLEE, Action.REJECT)],
    State.ENDED: [(Party.CALLEE, Action.ACCEPT), (Party.CALLER, Action.HANGUP)],
    State.MISSED: [(Party.CALLER, Action.HANGUP)],
    State.FAILED: [(Party.CALLER, Action.FAIL)],
}


def test_every_transition_through_the_api(server, account):
    """Each (state, action, party): allowed ones do what the table says, the rest are 409.

    An illegal action changes nothing, so one call per state serves all of them;
    each allowed action gets a fresh call.
    """
    clients = {Party.CALLER: account("alice").client, Party.CALLEE: account("bob").client}

    def call_in(state: State) -> str:
        call_id, _ = initiate(clients[Party.CALLER], "bob")
        for step_party, step_action in ROUTES_TO[state]:
            answer = API_ACTIONS[step_action](clients[step_party], call_id)
            assert answer.status_code == 200, answer.text
        assert clients[Party.CALLER].get(f"/call/status/{call_id}").json()["state"] == state
        return call_id

    allowed_seen = set()
    for state in ROUTES_TO:
        unchanged = call_in(state)
        for action, act in API_ACTIONS.items():
            for party, client in clients.items():
                key = (state, action, party)
                if key in TRANSITIONS:
                    allowed_seen.add(key)
                    answer = act(client, call_in(state))
                    assert answer.status_code == 200, (key, answer.text)
                    assert answer.json()["state"] == TRANSITIONS[key].state, key
                else:
                    answer = act(client, unchanged)
                    assert answer.status_code == 409, (key, answer.text)
                    assert answer.json() == {
                        "error": f"{party} cannot {action} a call that is {state}"
                    }, key
        assert clients[Party.CALLEE].get(f"/call/status/{unchanged}").json()["state"] == state
    reachable = {key for key in TRANSITIONS if key[2] is not Party.SYSTEM}
    assert allowed_seen == reachable


# ---------------------------------------------------------------- reasons (issue 21)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/call/hangup", {"reason": "failed"}, id="hangup-failed"),
        pytest.param("/call/reject", {"reason": "failed"}, id="reject-failed"),
    ],
)
def test_a_failure_reason_reaches_the_other_party(server, account, path, body):
    alice, bob = account("alice"), account("bob")
    alice_events, bob_events = EventSocket(server, alice.token), EventSocket(server, bob.token)
    call_id, _ = initiate(alice.client, "bob")
    bob_events.expect(EVENT_CALL_INCOMING)
    why = "bob's phone could not open its microphone: no such device"
    answer = bob.client.post(path, json={"call_id": call_id, **body, "detail": why})
    assert answer.status_code == 200, answer.text
    for events in (alice_events, bob_events):
        event = events.expect(EVENT_CALL_FAILED if path == "/call/hangup" else EVENT_CALL_REJECTED)
        assert (event["payload"]["reason"], event["payload"]["detail"]) == ("failed", why)
    # the history keeps the state reason only
    (view,) = alice.client.get("/calls/history").json()["calls"]
    assert (view["state"], view["reason"], view["detail"]) == (
        "failed" if path == "/call/hangup" else "rejected",
        "failed",
        None,
    )


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param("x" * 201, id="too-long"),
        pytest.param("", id="empty"),
        pytest.param("two\nlines", id="newline"),
        pytest.param("bell\x07", id="control"),
    ],
)
def test_a_failure_reason_must_be_a_short_printable_line(server, account, detail):
    alice, _bob = account("alice"), account("bob")
    call_id, _ = initiate(alice.client, "bob")
    answer = alice.client.post(
        "/call/hangup", json={"call_id": call_id, "reason": "failed", "detail": detail}
    )
    assert answer.status_code == 422, answer.text
    assert alice.client.get(f"/call/status/{call_id}").json()["state"] == "ringing"


# ---------------------------------------------------------------- the sweeper


def test_ring_timeout_is_missed_on_both_sides(server, account):
    alice, bob = account("alice"), account("bob")
    alice_events, bob_events = EventSocket(server, alice.token), EventSocket(server, bob.token)
    call_id, _ = initiate(alice.client, "bob")
    bob_events.expect(EVENT_CALL_INCOMING)
    server.clock.advance(RING_TIMEOUT_S - 1)
    bob_events.assert_quiet()
    server.clock.advance(2)
    for events in (alice_events, bob_events):
        view = events.expect(EVENT_CALL_MISSED)["payload"]
        assert (view["state"], view["reason"], view["ended_by"]) == ("missed", "timeout", "system")
    late = accept(bob.client, call_id)
    assert (late.status_code, late.json()) == (
        409,
        {"error": "callee cannot accept a call that is missed"},
    )
    assert bob.client.get("/call/pending/bob").json() == {"calls": []}


def test_call_whose_parties_vanished_is_ended(server, account):
    alice, bob = account("alice"), account("bob")
    lost, _ = initiate(alice.client, "bob")
    kept, _ = initiate(alice.client, "bob")
    for call_id in (lost, kept):
        assert accept(bob.client, call_id).status_code == 200
    alice_events = EventSocket(server, alice.token)
    server.clock.advance(VANISH_GRACE_S + 1)
    # bob never connected and alice is online: nothing ends yet
    time.sleep(5 * SWEEP_S)
    assert bob.client.get(f"/call/status/{lost}").json()["state"] == "active"
    assert hangup(alice.client, kept).status_code == 200
    alice_events.close()
    wait_for_offline(server, alice.client, "alice")
    server.clock.advance(VANISH_GRACE_S + 1)
    view = wait_for_state(bob.client, lost, "ended")
    assert (view["reason"], view["ended_by"]) == ("lost", "system")
    backlog = EventSocket(server, bob.token).backlog
    assert backlog[-1]["type"] == EVENT_CALL_ENDED
    assert backlog[-1]["payload"]["call_id"] == lost


def wait_for_offline(server: RunningServer, client: httpx.Client, name: str) -> None:
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while client.get("/presence", params={"names": name}).json()["users"][0]["online"]:
        assert time.monotonic() < deadline, f"{name} stays online"
        time.sleep(0.01)


# ---------------------------------------------------------------- races


def race(*requests: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Send the requests at the same moment, from threads; their answers in order."""
    barrier = threading.Barrier(len(requests))
    answers: list[httpx.Response | None] = [None] * len(requests)

    def run(index: int) -> None:
        barrier.wait()
        answers[index] = requests[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def test_concurrent_actions_have_one_winner(server, account):
    alice, bob = account("alice"), account("bob")
    with (
        server.client(bob.token) as bob_phone_2,
        server.client(alice.token) as alice_phone_2,
    ):
        for _ in range(5):
            # two phones of the callee: one accepts, one rejects
            call_id, _ = initiate(alice.client, "bob")
            answers = race(
                partial(accept, bob.client, call_id), partial(reject, bob_phone_2, call_id)
            )
            codes = sorted(answer.status_code for answer in answers)
            assert codes == [200, 409], [a.text for a in answers]
            loser = next(a for a in answers if a.status_code == 409)
            assert loser.json()["error"].startswith("callee cannot ")

            # the caller's two phones both hang up an active call
            call_id, _ = initiate(alice.client, "bob")
            accept(bob.client, call_id)
            answers = race(
                partial(hangup, alice.client, call_id), partial(hangup, alice_phone_2, call_id)
            )
            assert sorted(a.status_code for a in answers) == [200, 409]

            # accept against the caller's hang-up: accept loses, or both apply in order
            call_id, _ = initiate(alice.client, "bob")
            accepted, hung_up = race(
                partial(accept, bob.client, call_id), partial(hangup, alice.client, call_id)
            )
            assert hung_up.status_code == 200
            final = alice.client.get(f"/call/status/{call_id}").json()
            if accepted.status_code == 200:
                assert (final["state"], final["reason"]) == ("ended", "hangup")
            else:
                assert accepted.json() == {"error": "callee cannot accept a call that is missed"}
                assert (final["state"], final["reason"]) == ("missed", "cancelled")
                assert final["relay"] is None  # an allocation made for the lost accept is gone


def test_openapi_lists_the_call_routes(server):
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    for path in (
        "/call/initiate",
        "/call/accept",
        "/call/confirm",
        "/call/reject",
        "/call/hangup",
        "/call/status/{call_id}",
        "/call/pending/{name}",
        "/calls/history",
    ):
        assert path in spec["paths"], path
    assert spec["paths"]["/call/accept"]["post"]["responses"]["403"]
