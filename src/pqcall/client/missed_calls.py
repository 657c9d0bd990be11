"""Calls that never rang on this phone, in its history: refused ones and missed ones.

A :class:`~pqcall.client.phone.Phone` makes a :class:`~pqcall.client.call.Call` for
every call that rings here, and that call records itself when it ends. Two kinds
never become one, and :class:`CallLog` records them:

- calls the phone refused or left unanswered before they rang (screening, a bad
  offer, busy): :meth:`CallLog.record_refused`; group invites screened out, or
  that rang out while the phone was away: :meth:`CallLog.record_group`;
- calls that rang out while the phone was not connected: the server rings an
  offline phone until its ring timeout (``call.incoming`` waits for it), then
  marks the call missed, and the ``call.missed`` event reaches the phone when it
  comes back. :meth:`CallLog.missed_while_away` records it once (its call id is
  looked up in the recent history first, as the event may come again after a
  crash) and returns a :class:`MissedCall` for the user to see.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pqcall.client.call_outcome import MISSED_WHILE_OFFLINE
from pqcall.client.history import History
from pqcall.client.phone_callstate import CallState, Direction
from pqcall.signaling.group_messages import GroupView
from pqcall.signaling.messages import EVENT_CALL_MISSED, CallDetail, CallView, Event

if TYPE_CHECKING:
    from pqcall.client.group_call import GroupCall

logger = logging.getLogger(__name__)

MAX_REMEMBERED_CALL_IDS = 512
"""Call ids recorded here, remembered so a repeated event is not recorded twice."""
HISTORY_LOOKBACK_CALLS = 200
"""Recent history records searched for a call id before a missed call is recorded."""


@dataclass(frozen=True, slots=True)
class MissedCall:
    """A call that rang out while this phone was away."""

    call_id: str
    """The call's id."""
    caller: str
    """Who called."""
    created: float
    """When it was placed (unix seconds)."""
    reason: str
    """Why nobody answered: ``missed while offline``, or ``cancelled`` by the caller."""
    is_group: bool = False
    """An invitation to a group call (``caller``: who invited) that rang out unanswered."""


class CallLog:
    """Writes the history records of calls that never rang here.

    Args:
        history: the home's call history.
    """

    def __init__(self, history: History) -> None:
        self.history = history  # where records go
        self._recorded: OrderedDict[str, None] = OrderedDict()  # call ids written by us

    def record_refused(self, detail: CallDetail, result: str, reason: str) -> None:
        """Record an incoming call refused (or left unanswered) before it rang."""
        self._remember(detail.call_id)
        self._append(
            {
                "call_id": detail.call_id,
                "peer": detail.caller,
                "direction": str(Direction.INCOMING),
                "result": str(result),
                "reason": reason,
                "started_unix": detail.created,
                "ended_unix": time.time(),
                "duration_s": 0.0,
            }
        )

    def record_group(self, view: GroupView, inviter: str, result: str, reason: str) -> bool:
        """Record a group invite that never rang here (screened) or rang out unanswered.

        Returns False (and records nothing) if the call is in the history already.
        """
        if self._was_recorded(view.call_id):
            return False
        self._remember(view.call_id)
        self._append(
            {
                "call_id": view.call_id,
                "peer": inviter,
                "group": True,
                "members": sorted(member.name for member in view.members),
                "direction": str(Direction.INCOMING),
                "result": str(result),
                "reason": reason,
                "started_unix": view.created,
                "ended_unix": time.time(),
                "duration_s": 0.0,
            }
        )
        return True

    def record_group_call(self, call: GroupCall, peer: str) -> bool:
        """Record a group call, once it ended, that we joined or declined (decision 0632).

        Joined: ``result`` ``ended`` with ``answered_unix`` (when we joined; the
        shared word is ``answered``), ``members`` everyone in the roster or seen
        joined, ``duration_s`` from joining to the end. Declined here: ``rejected``
        (``declined``) or ``busy``. Anything else (it rang out, ended before an
        answer) is :meth:`record_group`'s. ``peer``: who invited us, or whom we
        invited. Returns False (and records nothing) if there is nothing to record
        or the call is in the history already.
        """
        if call.joined_at is not None:
            result = CallState.ENDED
        elif call.reason in ("declined", "busy"):
            result = CallState.REJECTED if call.reason == "declined" else CallState.BUSY
        else:
            return False
        if self._was_recorded(call.call_id):
            return False
        self._remember(call.call_id)
        ended = call.ended_at if call.ended_at is not None else time.time()
        joined = call.joined_at
        members = {member.name for member in call.view.members} | set(call.history)
        self._append(
            {
                "call_id": call.call_id,
                "peer": peer,
                "group": True,
                "members": sorted(members),
                "direction": str(Direction.INCOMING if call.incoming else Direction.OUTGOING),
                "result": str(result),
                "reason": call.reason,
                "started_unix": call.view.created,
                "answered_unix": joined,
                "ended_unix": ended,
                "duration_s": 0.0 if joined is None else round(max(0.0, ended - joined), 3),
            }
        )
        return True

    def missed_while_away(self, event: Event, our_name: str) -> MissedCall | None:
        """Record a ``call.missed`` event for a call that never rang here; None if not one.

        Not one: another event type, a call we placed, a call recorded already.
        """
        if event.type != EVENT_CALL_MISSED:
            return None
        try:
            view = CallView.model_validate(event.payload)
        except ValueError:
            logger.info("event %s: not a valid call view", event.seq)
            return None
        if view.callee != our_name or self._was_recorded(view.call_id):
            return None
        reason = MISSED_WHILE_OFFLINE if view.reason == "timeout" else str(view.reason or "")
        self._remember(view.call_id)
        self._append(
            {
                "call_id": view.call_id,
                "peer": view.caller,
                "direction": str(Direction.INCOMING),
                "result": str(CallState.MISSED),
                "reason": reason,
                "started_unix": view.created,
                "ended_unix": view.ended,
                "duration_s": 0.0,
            }
        )
        return MissedCall(view.call_id, view.caller, view.created, reason)

    def _was_recorded(self, call_id: str) -> bool:
        if call_id in self._recorded:
            return True
        try:
            recent = self.history.list(HISTORY_LOOKBACK_CALLS)
        except Exception:
            logger.exception("could not read the call history")
            return False
        return any(record.get("call_id") == call_id for record in recent)

    def _remember(self, call_id: str) -> None:
        self._recorded[call_id] = None
        while len(self._recorded) > MAX_REMEMBERED_CALL_IDS:
            self._recorded.popitem(last=False)

    def _append(self, record: dict[str, Any]) -> None:
        try:
            self.history.append(record)
        except Exception:  # history is a convenience: never let it break the phone
            logger.exception("could not record call %s", record.get("call_id"))
