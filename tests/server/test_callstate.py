"""The call state machine: every (state, action, party) combination."""

import itertools

import pytest

from pqcall.exceptions import LocalProtocolError
from pqcall.signaling.callstate import (
    REJECT_REASONS,
    TERMINAL_STATES,
    TRANSITIONS,
    Action,
    IllegalTransition,
    Outcome,
    Party,
    State,
    outcome,
    transition,
)

R, A, J, E, M, F = (
    State.RINGING,
    State.ACTIVE,
    State.REJECTED,
    State.ENDED,
    State.MISSED,
    State.FAILED,
)

# the table, written out independently of the module's
EXPECTED = {
    (R, Action.ACCEPT, Party.CALLEE): (A, None),
    (R, Action.REJECT, Party.CALLEE): (J, None),
    (R, Action.HANGUP, Party.CALLER): (M, "cancelled"),
    (R, Action.HANGUP, Party.CALLEE): (J, "declined"),
    (R, Action.TIMEOUT, Party.SYSTEM): (M, "timeout"),
    (R, Action.FAIL, Party.CALLER): (F, "failed"),
    (R, Action.FAIL, Party.CALLEE): (F, "failed"),
    (R, Action.FAIL, Party.SYSTEM): (F, "failed"),
    (A, Action.CONFIRM, Party.CALLER): (A, None),
    (A, Action.HANGUP, Party.CALLER): (E, "hangup"),
    (A, Action.HANGUP, Party.CALLEE): (E, "hangup"),
    (A, Action.VANISH, Party.SYSTEM): (E, "lost"),
    (A, Action.FAIL, Party.CALLER): (F, "failed"),
    (A, Action.FAIL, Party.CALLEE): (F, "failed"),
    (A, Action.FAIL, Party.SYSTEM): (F, "failed"),
}

ALL = list(itertools.product(State, Action, Party))
LEGAL = [combo for combo in ALL if combo in EXPECTED]
ILLEGAL = [combo for combo in ALL if combo not in EXPECTED]


def _id(combo):
    state, action, party = combo
    return f"{party}-{action}-{state}"


def test_matrix_is_complete():
    assert len(ALL) == 6 * 7 * 3
    assert len(LEGAL) == len(EXPECTED) == 15
    assert set(TRANSITIONS) == set(EXPECTED)


@pytest.mark.parametrize("combo", LEGAL, ids=_id)
def test_legal(combo):
    state, reason = EXPECTED[combo]
    assert transition(*combo) is state
    assert outcome(*combo) == Outcome(state, reason)


@pytest.mark.parametrize("combo", ILLEGAL, ids=_id)
def test_illegal(combo):
    state, action, party = combo
    with pytest.raises(IllegalTransition) as exc:
        transition(state, action, party)
    assert str(exc.value) == f"{party.value} cannot {action.value} a call that is {state.value}"
    assert (exc.value.state, exc.value.action, exc.value.party) == combo
    with pytest.raises(IllegalTransition):
        outcome(state, action, party)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES), ids=str)
def test_terminal_states_accept_nothing(state):
    assert state.is_terminal
    for action, party in itertools.product(Action, Party):
        with pytest.raises(IllegalTransition):
            transition(state, action, party)


def test_non_terminal():
    assert not State.RINGING.is_terminal
    assert not State.ACTIVE.is_terminal


def test_illegal_transition_is_a_local_protocol_error():
    assert issubclass(IllegalTransition, LocalProtocolError)


def test_message_example():
    with pytest.raises(IllegalTransition, match=r"^caller cannot accept a call that is ringing$"):
        transition(State.RINGING, Action.ACCEPT, Party.CALLER)


def test_reject_reasons():
    assert REJECT_REASONS == ("declined", "busy", "failed", "key_mismatch")


def test_values_are_wire_strings():
    assert [s.value for s in State] == [
        "ringing",
        "active",
        "rejected",
        "ended",
        "missed",
        "failed",
    ]
    assert State("ringing") is State.RINGING
