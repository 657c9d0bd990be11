"""The call state machine, as one table.

Rule 1 (after h11's ``_state.py``): everything that affects the state machine
lives here. The server looks an action up in :data:`TRANSITIONS` and records
the outcome; nothing else decides whether an action is allowed.

::

                 accept (callee)              hangup (either) ──> ended "hangup"
    ringing ─────────────────────> active ── vanish (system) ──> ended "lost"
       │                             │ ^
       │                             └─┘ confirm (caller)
       ├─ reject (callee) ──────────> rejected  declined | busy | failed
       ├─ hangup (callee) ──────────> rejected  "declined"
       ├─ hangup (caller) ──────────> missed    "cancelled"
       ├─ timeout (system) ─────────> missed    "timeout"
       └─ fail (anyone) ────────────> failed    "failed"   (also from active)

``rejected``, ``ended``, ``missed`` and ``failed`` are terminal: they accept no
action at all. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from pqcall.exceptions import LocalProtocolError

RejectReason = Literal["declined", "busy", "failed", "key_mismatch"]
"""Why a callee refuses a ringing call: the ``reason`` of ``reject``. ``key_mismatch``:
the callee's phone refused the offer because an identity key is not the expected one
(the offer was made for another key of the callee's, or the caller's key differs from
the callee's pin), a sign of key substitution the caller must be told about."""

REJECT_REASONS: tuple[RejectReason, ...] = ("declined", "busy", "failed", "key_mismatch")


class State(enum.StrEnum):
    """Where a call is. The values are stored in the database and sent to phones."""

    RINGING = "ringing"
    ACTIVE = "active"
    REJECTED = "rejected"
    ENDED = "ended"
    MISSED = "missed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """Whether no action is allowed any more."""
        return self in TERMINAL_STATES


class Action(enum.StrEnum):
    """Something a party asks to do to a call."""

    ACCEPT = "accept"
    REJECT = "reject"
    CONFIRM = "confirm"
    HANGUP = "hangup"
    TIMEOUT = "timeout"
    FAIL = "fail"
    VANISH = "vanish"


class Party(enum.StrEnum):
    """Who acts: one of the call's two users, or the server itself."""

    CALLER = "caller"
    CALLEE = "callee"
    SYSTEM = "system"


TERMINAL_STATES = frozenset({State.REJECTED, State.ENDED, State.MISSED, State.FAILED})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an allowed action does."""

    state: State
    """The state after the action."""
    reason: str | None
    """The reason to record, fixed by the table; ``None`` for ``accept`` and
    ``confirm`` (no reason) and for ``reject`` (the callee gives one of
    :data:`REJECT_REASONS`)."""


TRANSITIONS: dict[tuple[State, Action, Party], Outcome] = {
    # ringing: the callee decides, the caller may give up, the server times out
    (State.RINGING, Action.ACCEPT, Party.CALLEE): Outcome(State.ACTIVE, None),
    (State.RINGING, Action.REJECT, Party.CALLEE): Outcome(State.REJECTED, None),
    (State.RINGING, Action.HANGUP, Party.CALLER): Outcome(State.MISSED, "cancelled"),
    (State.RINGING, Action.HANGUP, Party.CALLEE): Outcome(State.REJECTED, "declined"),
    (State.RINGING, Action.TIMEOUT, Party.SYSTEM): Outcome(State.MISSED, "timeout"),
    (State.RINGING, Action.FAIL, Party.CALLER): Outcome(State.FAILED, "failed"),
    (State.RINGING, Action.FAIL, Party.CALLEE): Outcome(State.FAILED, "failed"),
    (State.RINGING, Action.FAIL, Party.SYSTEM): Outcome(State.FAILED, "failed"),
    # active: the caller sends its handshake confirmation, then either side ends it
    (State.ACTIVE, Action.CONFIRM, Party.CALLER): Outcome(State.ACTIVE, None),
    (State.ACTIVE, Action.HANGUP, Party.CALLER): Outcome(State.ENDED, "hangup"),
    (State.ACTIVE, Action.HANGUP, Party.CALLEE): Outcome(State.ENDED, "hangup"),
    (State.ACTIVE, Action.VANISH, Party.SYSTEM): Outcome(State.ENDED, "lost"),
    (State.ACTIVE, Action.FAIL, Party.CALLER): Outcome(State.FAILED, "failed"),
    (State.ACTIVE, Action.FAIL, Party.CALLEE): Outcome(State.FAILED, "failed"),
    (State.ACTIVE, Action.FAIL, Party.SYSTEM): Outcome(State.FAILED, "failed"),
}
"""Every allowed (state, action, party); any other combination is illegal."""


class IllegalTransition(LocalProtocolError):
    """An action that the table does not allow for this state and party.

    The server answers it with 409 Conflict and this message.
    """

    def __init__(self, state: State, action: Action, party: Party) -> None:
        super().__init__(f"{party} cannot {action} a call that is {state}")
        self.state = state  # the call's state when the action came
        self.action = action  # what was asked
        self.party = party  # who asked


def outcome(state: State, action: Action, party: Party) -> Outcome:
    """Look up what ``party`` doing ``action`` to a call in ``state`` does.

    Raises:
        IllegalTransition: the table does not allow it.
    """
    try:
        return TRANSITIONS[state, action, party]
    except KeyError:
        raise IllegalTransition(state, action, party) from None


def transition(state: State, action: Action, party: Party) -> State:
    """The state after ``party`` does ``action`` to a call in ``state``.

    Raises:
        IllegalTransition: the table does not allow it.
    """
    return outcome(state, action, party).state
