"""How a call ended, in the words both sides show: pure helpers for a call.

One set of words for outcomes (issue 21): *cancelled*, *declined*, *no answer*,
*missed*, *busy*, *failed* (with its reason). The server's end events carry a
short state reason (``timeout``, ``busy``...) and, for a failure, the ``detail``
the failing party gave ("bob's phone could not open its microphone: ...");
:func:`outcome_of_end_event` turns them into our state and the reason we show and
record. :func:`failure_detail` is the other direction: what we tell the peer
(through the server) when our side of a call fails. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pqcall.client.call_context import key_mismatch_reason
from pqcall.client.phone_callstate import CallState, Direction
from pqcall.exceptions import DeviceError
from pqcall.signaling.messages import (
    EVENT_CALL_FAILED,
    EVENT_CALL_MISSED,
    EVENT_CALL_REJECTED,
    MAX_REASON_DETAIL_LENGTH,
)

NO_ANSWER = "no answer"
"""The caller's reason when the callee's phone rang out (the server's ring timeout)."""
MISSED_WHILE_OFFLINE = "missed while offline"
"""The callee's reason for a call that rang out while its phone was not connected."""
_FOLDERS = re.compile(r"(?:[A-Za-z]:)?(?:[^\s/\\]*[/\\])+")
"""The folders of a path in an error text (``/home/bob/x.wav`` → ``x.wav``)."""


class AudioOpenFailed(DeviceError):
    """A call's microphone or speaker could not be opened."""

    def __init__(self, device: str, cause: Exception) -> None:
        super().__init__(f"could not open the {device}: {cause}")
        self.device = device  # "microphone" or "speaker"
        self.cause = cause  # the device error itself


LOST_REASONS = frozenset({"peer unreachable", "media timeout"})
"""Reasons of a call that ended because nothing came from the peer ("media timeout": older)."""
OUTCOME_WORDS = (
    "answered",
    "cancelled",
    "declined",
    "no answer",
    "missed",
    "busy",
    "blocked",
    "failed",
)
"""Every word :func:`outcome_word` starts with (``failed`` is followed by ``: <reason>``)."""


def outcome_word(summary: Mapping[str, Any]) -> str:
    """How a finished call went, in the shared words, from its summary or history record.

    ``answered``, ``cancelled`` (we stopped our call before an answer),
    ``declined`` (either side), ``no answer`` (our call rang out), ``missed``
    (a call to us nobody answered), ``busy``, ``blocked``, or ``failed: <reason>``
    (``failed: connection lost`` when nothing came from the peer any more).
    """
    result = summary.get("result")
    reason = str(summary.get("reason") or "")
    outgoing = summary.get("direction") == str(Direction.OUTGOING)
    if result == str(CallState.ENDED):
        if summary.get("answered_unix"):
            return "answered"
        return "cancelled" if outgoing else "missed"
    if result == str(CallState.REJECTED):
        return "declined"
    if result == str(CallState.MISSED):
        if not outgoing:
            return "missed"
        return "cancelled" if reason == "cancelled" else NO_ANSWER
    if result == str(CallState.FAILED):
        return (
            f"failed: {'connection lost' if reason in LOST_REASONS else reason or 'unknown reason'}"
        )
    return str(result or "unknown")


def no_answer_reason(peer: str, *, peer_offline: bool) -> str:
    """The caller's reason for a call nobody answered: ``no answer: bob was offline``."""
    return f"{NO_ANSWER}: {peer} was offline" if peer_offline else NO_ANSWER


def failure_detail(our_name: str, error: Exception | str) -> str:
    """What the peer hears when our side fails: ``bob's phone could not open its microphone: …``.

    One printable line of at most :data:`MAX_REASON_DETAIL_LENGTH` characters, as the
    server requires. The detail crosses the server in clear, so the folders of any
    path in it are dropped (a device's file name stays; where it lives does not).
    """
    if isinstance(error, AudioOpenFailed):
        text = f"{our_name}'s phone could not open its {error.device}: {error.cause}"
    else:
        text = f"{our_name}'s phone failed: {error}"
    return one_line(_FOLDERS.sub("", text))


def one_line(text: str) -> str:
    """``text`` as one printable line that fits :data:`MAX_REASON_DETAIL_LENGTH`."""
    printable = "".join(char if char.isprintable() else " " for char in text).strip()
    if len(printable) > MAX_REASON_DETAIL_LENGTH:
        printable = printable[: MAX_REASON_DETAIL_LENGTH - 1] + "…"
    return printable or "failed"


def outcome_of_end_event(
    event_type: str,
    payload: dict[str, Any],
    *,
    direction: Direction,
    peer: str,
    peer_offline: bool = False,
) -> tuple[CallState, str]:
    """Our end state and reason for a server end event (``call.rejected|missed|failed|ended``).

    Args:
        event_type: the event's type.
        payload: its call view (``reason``, ``ended_by``, ``detail``).
        direction: whether we placed the call.
        peer: the other party.
        peer_offline: the server showed the callee offline when we placed the call.
    """
    reason = payload.get("reason")
    detail = payload.get("detail")
    shown_detail = detail if isinstance(detail, str) and detail else None
    ours = "caller" if direction is Direction.OUTGOING else "callee"
    if event_type == EVENT_CALL_REJECTED and reason == "key_mismatch":
        return CallState.FAILED, key_mismatch_reason(peer)
    if event_type == EVENT_CALL_REJECTED:
        state = {"busy": CallState.BUSY, "failed": CallState.FAILED}.get(
            str(reason), CallState.REJECTED
        )
        if state is CallState.FAILED and shown_detail is not None:
            return state, shown_detail
        return state, str(reason or "declined")
    if event_type == EVENT_CALL_MISSED:
        if reason == "timeout":
            if direction is Direction.OUTGOING:
                return CallState.MISSED, no_answer_reason(peer, peer_offline=peer_offline)
            return CallState.MISSED, NO_ANSWER
        return CallState.MISSED, str(reason or NO_ANSWER)
    if event_type == EVENT_CALL_FAILED:
        return CallState.FAILED, shown_detail or str(reason or "failed")
    if payload.get("ended_by") == ours:
        return CallState.ENDED, "ended by another phone of ours"
    return CallState.ENDED, "peer hung up"
