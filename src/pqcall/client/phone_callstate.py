"""A softphone's view of one call: its states and the moves between them (pure).

::

    outgoing ──┐                      ┌── ended     (someone hung up)
               ├── connecting ── active ┤
    incoming ──┘        │              └── failed    (media lost, no path)
       │  │             └── failed, ended
       │  └── rejected (declined by us), missed (caller gave up, ring timeout)
       └── busy (we were in another call)
    outgoing ── rejected (declined), busy, missed (ring timeout), failed, ended (we cancelled)

The server keeps its own table (:mod:`pqcall.signaling.callstate`) for what it
stores; this one is what a person sees on the phone, so it separates *busy*
from *rejected* and has *connecting* (handshake done, media path being found).
"""

from __future__ import annotations

import enum
from typing import Final

from pqcall.exceptions import LocalProtocolError


class CallState(enum.StrEnum):
    """Where a call is, as the phone shows it."""

    OUTGOING = "outgoing"
    """We called; the peer's phone rings."""
    INCOMING = "incoming"
    """The peer calls; our phone rings."""
    CONNECTING = "connecting"
    """Answered: finishing the handshake and finding a media path."""
    ACTIVE = "active"
    """Audio flows."""
    ENDED = "ended"
    """Hung up (or cancelled before it was answered)."""
    REJECTED = "rejected"
    """Declined by the callee."""
    MISSED = "missed"
    """Never answered: the caller gave up or the ring timed out."""
    BUSY = "busy"
    """The callee was in another call."""
    FAILED = "failed"
    """Something broke: handshake, key check, media path, or media timeout."""


class Direction(enum.StrEnum):
    """Who placed the call."""

    OUTGOING = "outgoing"
    INCOMING = "incoming"


TERMINAL: Final = frozenset(
    {CallState.ENDED, CallState.REJECTED, CallState.MISSED, CallState.BUSY, CallState.FAILED}
)
"""States a call never leaves."""

_ALLOWED: Final[dict[CallState, frozenset[CallState]]] = {
    CallState.OUTGOING: frozenset({CallState.CONNECTING} | TERMINAL),
    CallState.INCOMING: frozenset({CallState.CONNECTING} | TERMINAL),
    CallState.CONNECTING: frozenset({CallState.ACTIVE, CallState.ENDED, CallState.FAILED}),
    CallState.ACTIVE: frozenset({CallState.ENDED, CallState.FAILED}),
}


def is_terminal(state: CallState) -> bool:
    """Whether ``state`` is an end state."""
    return state in TERMINAL


def check_move(current: CallState, new: CallState) -> None:
    """Refuse a move the table does not allow.

    Raises:
        LocalProtocolError: ``current`` is terminal or cannot become ``new``.
    """
    if new not in _ALLOWED.get(current, frozenset()):
        raise LocalProtocolError(f"a call cannot go from {current} to {new}")


def initial_state(direction: Direction) -> CallState:
    """The state a new call starts in."""
    return CallState.OUTGOING if direction is Direction.OUTGOING else CallState.INCOMING
