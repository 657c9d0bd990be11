"""What a phone does when a call arrives: 1:1 offers (checked before ringing) and group invites.

Moved out of :mod:`pqcall.client.phone` (which keeps the state these functions
read and write): :func:`incoming_call` checks a ``call.incoming`` event (stale
ring, screening, the offer's signature and freshness, replays, strangers, pins)
and makes it ring, or refuses it; :func:`group_invite` does the same for a
``group.invite`` (busy when in another call, else it waits for the user, or is
joined at once with ``auto_answer``). A group invite the screen turns away, and
one that rang out while the phone was away (its roster says ``no_answer``, or the
call ended first), are written to the history; the second is told to the
``on_missed`` listeners as a missed group call. One that rang here and ended
unanswered is written to the history as missed too. An invite event older than
:data:`STALE_RING_S` rings only if the server still has us invited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pqcall.client.call import Call
from pqcall.client.missed_calls import MissedCall
from pqcall.client.peers import SecurityWarning, check_caller, key_change_message, trust_of
from pqcall.client.phone_callstate import CallState, Direction
from pqcall.client.screening import TurnAway
from pqcall.crypto.handshake import CalleeHandshake
from pqcall.crypto.handshake_messages import Offer
from pqcall.crypto.pinning import KeyChanged
from pqcall.exceptions import DecodeError, HandshakeFailed, PqcallError, ServerError
from pqcall.signaling.callstate import RejectReason
from pqcall.signaling.group_messages import GroupView
from pqcall.signaling.messages import CallDetail, Event

if TYPE_CHECKING:
    from pqcall.client.group_call import GroupCall
    from pqcall.client.phone import Phone

logger = logging.getLogger(__name__)

STALE_RING_S = 5.0
"""An incoming-call event older than this is checked with the server before ringing."""
MAX_RINGING_CALLS = 4
"""Incoming calls that may ring at once; another one is answered *busy*."""
MAX_SCREENED_CALL_IDS = 256
"""Call ids of calls left unanswered on purpose, remembered so a repeated event is ignored."""


async def incoming_call(phone: Phone, event: Event) -> None:
    """A ``call.incoming`` event: check it, then ring (or refuse, or leave it unanswered)."""
    api = phone._require_api()
    detail = CallDetail.model_validate(event.payload)
    if detail.call_id in phone._screened:
        return  # left unanswered on purpose already (the event came again)
    if time.time() - event.created > STALE_RING_S:
        try:
            current = await api.status(detail.call_id)
        except ServerError:
            return
        if str(current.state) != "ringing":
            return  # an old event replayed after a reconnect
    if await screen_caller(phone, detail):
        return
    handshake = CalleeHandshake(
        call_id=bytes.fromhex(detail.call_id),
        our_name=phone.username,
        our_identity=phone._require_account().device_identity,
        our_account=phone.identity,
    )
    try:
        if detail.offer is None:
            raise HandshakeFailed("the incoming call carries no offer")
        offer = handshake.receive_offer(detail.offer, now=time.time())
        if offer.caller_name != detail.caller:
            raise HandshakeFailed(
                f"the offer is signed as {offer.caller_name}, the server says {detail.caller}"
            )
    except HandshakeFailed as exc:
        message = f"refused a call from {detail.caller}: {exc}"
        phone.warnings.put_nowait(SecurityWarning(detail.caller, message))
        reason: RejectReason = (
            "key_mismatch" if made_for_another_key(phone, detail.offer) else "failed"
        )
        await phone._refuse(detail.call_id, reason)
        phone.call_log.record_refused(detail, CallState.FAILED, str(exc))
        return
    if not await asyncio.to_thread(
        phone.seen_offers.check_and_add, detail.call_id, offer.offered_at_ms, now=time.time()
    ):
        logger.warning("refused call %s: its offer was seen before (a replay)", detail.call_id)
        await phone._refuse(detail.call_id, "failed")
        return
    is_contact = phone.contacts.get(detail.caller) is not None
    silenced = phone.screen.for_stranger(detail.caller, is_contact=is_contact)
    if silenced is not None:
        await turn_away(phone, detail, silenced)
        return
    # the offer's key: the caller's account key, or a device in their verified list
    account, result = await check_caller(api, phone.contacts, detail.caller, offer.caller_identity)
    if isinstance(result, KeyChanged):
        message = "refused a call: " + key_change_message(detail.caller)
        phone.warnings.put_nowait(SecurityWarning(detail.caller, message))
        await phone._refuse(detail.call_id, "key_mismatch")
        phone.call_log.record_refused(detail, CallState.FAILED, "caller's key changed")
        return
    call = Call(
        call_id=detail.call_id,
        peer=detail.caller,
        direction=Direction.INCOMING,
        peer_identity=account,
        context=phone._call_context(),
        media=phone.media,
        peer_trust=trust_of(result),
    )
    phone._adopt(call)
    handshake.vouch(account)
    call.start_incoming(handshake, detail)
    if phone.auto_answer:
        await call.accept()
    phone._incoming.put_nowait(call)


async def screen_caller(phone: Phone, detail: CallDetail) -> bool:
    """Turn the call away if it must not ring now; True when it was."""
    turned_away = phone.screen.before_offer(detail.caller, time.time())
    ringing = phone.ringing_calls
    if turned_away is not None:
        await turn_away(phone, detail, turned_away)
    elif (
        phone._engaged() is not None
        or phone.group_engaged()
        or (phone.auto_answer and phone._calls)
    ):
        await turn_away(phone, detail, TurnAway("busy", "busy: already in a call", True))
    elif len(ringing) >= MAX_RINGING_CALLS or detail.caller in {c.peer for c in ringing}:
        await turn_away(phone, detail, TurnAway("busy", "busy: too many calls ringing", True))
    else:
        return False
    return True


async def turn_away(phone: Phone, detail: CallDetail, turned_away: TurnAway) -> None:
    """Answer busy, or leave unanswered (it rings there until the server's timeout)."""
    if turned_away.answer_busy:
        await phone._refuse(detail.call_id, "busy")
    else:
        phone._screened[detail.call_id] = None
        while len(phone._screened) > MAX_SCREENED_CALL_IDS:
            phone._screened.popitem(last=False)
    phone.call_log.record_refused(detail, turned_away.result, turned_away.reason)


def made_for_another_key(phone: Phone, offer: bytes | None) -> bool:
    """Whether an offer names another identity than ours (key substitution)."""
    try:
        parsed = Offer.parse(offer or b"")
    except DecodeError:
        return False
    return parsed.callee_fingerprint != phone.identity.fingerprint()


async def group_invite(phone: Phone, event: Event) -> GroupCall | None:
    """A ``group.invite``: busy if we are in a call, else a :class:`GroupCall` that rings.

    With ``auto_answer`` it is joined at once. Returns the call (None: declined or stale).
    """
    from pqcall.client.group_call import GroupCall

    view = GroupView.model_validate({k: v for k, v in event.payload.items() if k != "relay"})
    me = next((m for m in view.members if m.name == phone.username), None)
    if me is not None and me.invited_by is not None and _rang_out(view, me.state):
        _missed_group_call(phone, view, me.invited_by)  # while we were away (or not ringing)
        return None
    if view.ended is not None or me is None or me.state not in ("invited", "gone"):
        return None  # "gone": this phone vanished from the call (a restart): it may come back
    if me.state == "gone" and not phone.auto_answer:
        return None  # only an answering machine rejoins on its own; a person is invited again
    inviter = me.invited_by
    if me.state == "invited" and inviter is not None:
        # the same screen as a 1:1 call: a blocked or cooling-down inviter, or a stranger
        # while strangers are silenced, does not ring here (the invite rings out on the server)
        is_contact = phone.contacts.get(inviter) is not None
        turned_away = phone.screen.before_offer(inviter, time.time()) or phone.screen.for_stranger(
            inviter, is_contact=is_contact
        )
        if turned_away is not None:
            logger.info("group call %s from %s: %s", view.call_id, inviter, turned_away.reason)
            phone.call_log.record_group(view, inviter, turned_away.result, turned_away.reason)
            if turned_away.answer_busy:
                await _decline_busy(GroupCall(phone._group_context(), view, incoming=True))
            return None
        if time.time() - event.created > STALE_RING_S and not await _still_invited(phone, view):
            return None  # replayed after a reconnect: its ring-out or end comes next
    call = GroupCall(phone._group_context(), view, incoming=True)
    if phone._engaged() is not None or phone.group_engaged():
        await _decline_busy(call)
        phone.call_log.record_group_call(call, inviter or view.creator)
        return None
    phone._groups[view.call_id] = call
    if phone.auto_answer:
        try:
            await call.accept()
        except PqcallError as exc:
            logger.warning("group call %s: could not join: %s", view.call_id, exc)
            phone._groups.pop(view.call_id, None)
            return None
    phone._group_invites.put_nowait(call)
    phone._spawn(record_group_call(phone, call, inviter or view.creator))
    return call


async def record_group_call(phone: Phone, call: GroupCall, peer: str) -> None:
    """Put a group call in the history when it ends: joined, declined, or missed.

    An invite that ended unanswered (rang out, or the call ended) is a missed call.
    """
    await call.wait_ended()
    if call.joined_at is None and call.reason in ("no answer", "the call ended"):
        reason = "no answer" if call.reason == "no answer" else "the call ended before you answered"
        phone.call_log.record_group(call.view, peer, str(CallState.MISSED), reason)
    else:
        phone.call_log.record_group_call(call, peer)


async def _decline_busy(call: GroupCall) -> None:
    try:
        await call.decline(busy=True)
    except PqcallError as exc:
        logger.info("group call %s: could not answer busy: %s", call.call_id, exc)


def _rang_out(view: GroupView, state: str) -> bool:
    """Whether our invitation ended unanswered: rang out, or the call ended first."""
    return state == "no_answer" or (view.ended is not None and state == "invited")


def _missed_group_call(phone: Phone, view: GroupView, inviter: str) -> None:
    """Record a group invite that rang out without ringing here, once, and tell the user."""
    from pqcall.client.phone import _tell

    reason = "no answer" if view.ended is None else "the call ended before you answered"
    if phone.call_log.record_group(view, inviter, str(CallState.MISSED), reason):
        missed = MissedCall(view.call_id, inviter, view.created, reason, is_group=True)
        _tell(phone._missed_listeners, missed, "missed group call")


async def _still_invited(phone: Phone, view: GroupView) -> bool:
    """Whether the server still has us invited to ``view``'s call (an old event is checked)."""
    from pqcall.client.group_api import GroupApi

    try:
        current = await GroupApi(phone._require_api()).status(view.call_id)
    except PqcallError as exc:
        logger.info("group call %s: an old invite, not checked: %s", view.call_id, exc)
        return False
    me = next((m for m in current.members if m.name == phone.username), None)
    return current.ended is None and me is not None and me.state == "invited"
