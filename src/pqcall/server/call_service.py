"""The call service: what each call action does, between the routes and storage.

Every action takes the same path (:func:`apply`):

1. load the call (404) and find who is acting: its caller or callee, or the
   server itself for timeouts; anyone else is refused (403);
2. look the action up in the state table
   (:func:`pqcall.signaling.callstate.outcome`); an action the table does not
   allow raises :class:`~pqcall.signaling.callstate.IllegalTransition` (409);
3. write the outcome with a compare-and-set
   (:meth:`~pqcall.server.storage.call_store.CallStore.update_call_state`). If another
   request or process changed the call in between, re-read it and judge the
   action again against the new state, so a lost race answers 409 with the
   reason;
4. store the events that announce the change in the same transaction as the
   new state (:meth:`~pqcall.server.push.EventHub.transaction`), push them after
   the commit, and allocate or release the media relay.

Who is told what (event payloads are call views, see ``docs/server.md``):

=========================  ===================================  ================================
change                     to                                   payload
=========================  ===================================  ================================
initiate                   callee ``call.incoming``             ``CallDetail`` with ``offer``
accept                     caller ``call.accepted``             ``CallDetail`` with ``answer``
                                                                and the caller's relay grant
                           callee ``call.accepted``             ``CallView`` (its other phones
                                                                stop ringing)
confirm                    callee ``call.confirmed``            ``CallDetail`` with ``confirm``
rejected/ended/missed/     both ``call.<state>``                ``CallView`` (who ended it, why,
failed                                                          and the ``detail`` the ending
                                                                party gave, if any)
=========================  ===================================  ================================

A call rings whether or not the callee is online: ``call.incoming`` is stored
and replayed when the callee's phone connects (``docs/server.md``), so a phone
that comes back within the ring timeout rings; after it, the sweeper marks the
call missed and both parties get ``call.missed`` (the callee on reconnect).

Timeouts and vanished parties go through :func:`apply` too, from
:class:`~pqcall.server.call_sweeper.CallSweeper`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from fastapi import status
from pydantic import ValidationError

from pqcall.exceptions import LocalProtocolError
from pqcall.server.auth import account_named
from pqcall.server.components import RELAY_EXTRA, relay_endpoint
from pqcall.server.context import AppContext, api_error
from pqcall.server.push import Outbox, event_hub
from pqcall.server.relay import MediaRelay
from pqcall.server.relay_table import RelayFull
from pqcall.server.storage import AccountRecord, CallExists, CallRecord
from pqcall.server.turn import turn_service
from pqcall.signaling.callstate import Action, IllegalTransition, Party, State, outcome
from pqcall.signaling.messages import (
    EVENT_CALL_ACCEPTED,
    EVENT_CALL_ANSWERED_ELSEWHERE,
    EVENT_CALL_CONFIRMED,
    EVENT_CALL_ENDED,
    EVENT_CALL_FAILED,
    EVENT_CALL_INCOMING,
    EVENT_CALL_MISSED,
    EVENT_CALL_REJECTED,
    AcceptCall,
    CallDetail,
    CallView,
    Candidate,
    ConfirmCall,
    HangupCall,
    InitiateCall,
    RejectCall,
    RelayGrant,
)

logger = logging.getLogger(__name__)

MAX_RACE_RETRIES = 3  # compare-and-set attempts before a request gives up with 409

HANDSHAKE_FIELDS = ("offer", "answer", "confirm")

EVENT_FOR_END = {
    State.REJECTED: EVENT_CALL_REJECTED,
    State.ENDED: EVENT_CALL_ENDED,
    State.MISSED: EVENT_CALL_MISSED,
    State.FAILED: EVENT_CALL_FAILED,
}


# ---------------------------------------------------------------- views


def party_of(call: CallRecord, account_id: int) -> Party | None:
    """Whether ``account_id`` is the call's caller or callee (``None``: a stranger)."""
    if account_id == call.caller_id:
        return Party.CALLER
    if account_id == call.callee_id:
        return Party.CALLEE
    return None


def view(call: CallRecord) -> CallView:
    """The call's state and history, without what the parties exchange."""
    return CallView(
        call_id=call.call_id,
        caller=call.caller,
        callee=call.callee,
        state=call.state,
        reason=call.reason,
        created=call.created,
        answered=call.answered,
        ended=call.ended,
        ended_by=call.ended_by,  # type: ignore[arg-type]  # only the three values are written
    )


def detail(
    call: CallRecord,
    *,
    handshake: Collection[str] = HANDSHAKE_FIELDS,
    relay: RelayGrant | None = None,
) -> CallDetail:
    """The call with candidates (own and server-reflexive) and the chosen handshake messages.

    Args:
        call: the call.
        handshake: which of ``offer``, ``answer``, ``confirm`` to include.
        relay: the receiving party's own relay grant, if any.
    """
    return CallDetail(
        **view(call).model_dump(),
        offer=call.offer if "offer" in handshake else None,
        answer=call.answer if "answer" in handshake else None,
        confirm=call.confirm if "confirm" in handshake else None,
        caller_candidates=with_reflexive(call.caller_candidates, call.caller_seen_address),
        callee_candidates=with_reflexive(call.callee_candidates, call.callee_seen_address),
        caller_seen_address=call.caller_seen_address,
        callee_seen_address=call.callee_seen_address,
        relay=relay,
    )


def with_reflexive(candidates: list[dict[str, Any]], seen: str | None) -> list[Candidate]:
    """A phone's candidates, then the host the server saw it at with each of their ports.

    The server-reflexive candidates let peers behind a simple NAT (one that
    keeps the port) reach each other; the HTTP source port itself says nothing
    about the media port, so only the host is taken from ``seen``.
    """
    own = [Candidate.model_validate(candidate) for candidate in candidates]
    if seen is None:
        return own
    host = seen.rpartition(":")[0].removeprefix("[").removesuffix("]")
    result = list(own)
    for port in dict.fromkeys(candidate.port for candidate in own):
        try:
            reflexive = Candidate(host=host, port=port)
        except ValidationError:
            return own  # not an address (a test transport); offer nothing extra
        if reflexive not in result:
            result.append(reflexive)
    return result


# ---------------------------------------------------------------- media relay


def _relay(context: AppContext) -> MediaRelay | None:
    relay = context.extras.get(RELAY_EXTRA)
    return relay if isinstance(relay, MediaRelay) else None


def relay_grant(
    context: AppContext, call: CallRecord, party: Party, request_host: str | None = None
) -> RelayGrant | None:
    """``party``'s own relay grant for ``call``, if the call has a live relay allocation.

    Args:
        context: the server's context (the relay is ``context.extras["relay"]``).
        call: the call.
        party: the caller or the callee; each gets only its own token.
        request_host: the host name this party reached the API at, if known; without
            it (and without ``--relay-host``) ``host`` is null: the phone uses the
            host it reaches the server at.
    """
    relay = _relay(context)
    if relay is None or party is Party.SYSTEM:
        return None
    allocation = relay.allocation(call.call_id)
    if allocation is None:
        return None
    endpoint = relay_endpoint(context, request_host, call.call_id)
    host, port = endpoint if endpoint is not None else (None, relay.address[1])
    token = allocation.caller_token if party is Party.CALLER else allocation.callee_token
    if not token:  # restored after a restart: grant secrets are never stored (the phone has it)
        return None
    turn = turn_service(context)  # standard TURN too (server/turn.py), if configured
    grant = None if turn is None else turn.grant(call.call_id, party is Party.CALLER)
    return RelayGrant(host=host, port=port, token=token, turn=grant)


# ---------------------------------------------------------------- actions


async def find_call(
    context: AppContext, call_id: str, account: AccountRecord, *, recent: bool = False
) -> tuple[CallRecord, Party]:
    """The call and the account's part in it.

    Args:
        recent: take the call as this process last saw it, if it did
            (:meth:`~pqcall.server.storage.call_store.CallStore.recent_call`): its
            parties are right, its state may be behind, which :func:`apply`'s
            compare-and-set notices. For actions, never for what a route shows.

    Raises:
        HTTPException: 404 no such call, 403 the account is not one of its parties.
    """
    call = context.storage.calls.recent_call(call_id) if recent else None
    if call is None:
        call = await context.storage.calls.get_call(call_id)
    if call is None:
        raise api_error(status.HTTP_404_NOT_FOUND, "no such call")
    party = party_of(call, account.id)
    if party is None:
        raise api_error(status.HTTP_403_FORBIDDEN, "not a party to this call")
    return call, party


async def initiate(
    context: AppContext, caller: AccountRecord, body: InitiateCall, seen: str | None
) -> CallRecord:
    """Create a ringing call and push ``call.incoming`` to the callee.

    Raises:
        HTTPException: 404 unknown callee, 400 calling oneself, 409 call id in use.
    """
    callee = await account_named(context, body.callee)
    if callee.id == caller.id:
        raise api_error(status.HTTP_400_BAD_REQUEST, "you cannot call yourself")
    try:
        # the call and its call.incoming commit together (one transaction, two statements)
        async with event_hub(context).transaction((callee.id,)) as outbox:
            call = await context.storage.calls.create_call(
                body.call_id,
                caller.id,
                callee.id,
                body.offer,
                [candidate.model_dump() for candidate in body.candidates],
                seen,
                context.now(),
                names=(caller.username, callee.username),
                connection=outbox.connection,
            )
            payload = detail(call, handshake=("offer",)).model_dump(mode="json")
            outbox.publish(callee.id, EVENT_CALL_INCOMING, payload)
    except CallExists:
        raise api_error(status.HTTP_409_CONFLICT, "call id is already in use") from None
    logger.info("call %s: %s calls %s", call.call_id, call.caller, call.callee)
    return call


async def accept(
    context: AppContext,
    account: AccountRecord,
    body: AcceptCall,
    seen: str | None,
    device: tuple[bytes | None, str | None] | None = None,
) -> CallRecord:
    """The callee answers: the call becomes active and gets a relay allocation if it can.

    ``device``: the answering device's id and name, for a callee with several
    devices: they get ``call.answered_elsewhere`` with them, so the others stop
    ringing and can say where it was answered (issue 22).
    """
    call, party = await find_call(context, body.call_id, account, recent=True)
    try:
        outcome(call.state, Action.ACCEPT, party)  # refuse before allocating anything
    except IllegalTransition:
        call, party = await find_call(context, body.call_id, account)  # the recent one was behind?
        outcome(call.state, Action.ACCEPT, party)
    # allocate before the state changes, so a hang-up right after always finds it to release
    relay = _relay(context)
    if relay is not None:
        try:
            relay.allocate(call.call_id)
        except (RelayFull, LocalProtocolError) as exc:
            logger.warning("call %s goes without a media relay: %s", call.call_id, exc)
    try:
        return await apply(
            context,
            call,
            party,
            Action.ACCEPT,
            answer=body.answer,
            callee_candidates=[candidate.model_dump() for candidate in body.candidates],
            callee_seen_address=seen,
            answered_on=device,
        )
    except Exception:
        if relay is not None:
            current = await context.storage.calls.get_call(call.call_id)
            if current is None or current.state is not State.ACTIVE:
                relay.release(call.call_id)  # unless another phone of the callee accepted
        raise


async def confirm(context: AppContext, account: AccountRecord, body: ConfirmCall) -> CallRecord:
    """The caller's handshake confirmation, pushed to the callee."""
    call, party = await find_call(context, body.call_id, account, recent=True)
    return await apply(context, call, party, Action.CONFIRM, confirm=body.confirm)


async def reject(context: AppContext, account: AccountRecord, body: RejectCall) -> CallRecord:
    """The callee refuses a ringing call (declined, busy or failed)."""
    call, party = await find_call(context, body.call_id, account, recent=True)
    return await apply(
        context, call, party, Action.REJECT, reason=body.reason, reason_detail=body.detail
    )


async def hangup(context: AppContext, account: AccountRecord, body: HangupCall) -> CallRecord:
    """Either party ends (or, ringing, cancels or declines) a call; ``failed`` fails it."""
    call, party = await find_call(context, body.call_id, account, recent=True)
    action = Action.HANGUP if body.reason == "hangup" else Action.FAIL
    return await apply(context, call, party, action, reason_detail=body.detail)


async def apply(
    context: AppContext,
    call: CallRecord,
    party: Party,
    action: Action,
    *,
    reason: str | None = None,
    reason_detail: str | None = None,
    answered_on: tuple[bytes | None, str | None] | None = None,
    **columns: Any,
) -> CallRecord:
    """Apply ``action`` by ``party`` to ``call`` as the state table says, then push it.

    Args:
        context: the server's context.
        call: the call as last read.
        party: who acts.
        action: what they do.
        reason: recorded when the table fixes none (a callee's reject reason).
        reason_detail: the acting party's reason for people, passed on in the end event only.
        columns: what the action brings (``answer``, ``confirm``, candidates...).

    Raises:
        IllegalTransition: the table does not allow the action in the call's
            (possibly just changed) state: 409.
        HTTPException: 409 when the call kept changing under the request.
    """
    storage = context.storage
    fresh = False  # ``call`` may be the recent one, whose state can be behind
    for _ in range(MAX_RACE_RETRIES):
        try:
            result = outcome(call.state, action, party)
        except IllegalTransition:
            if fresh:
                raise
            result = None
        if result is None:  # judge it again on the call as stored
            current = await storage.calls.get_call(call.call_id)
            if current is None:  # pragma: no cover - calls are never deleted
                raise api_error(status.HTTP_404_NOT_FOUND, "no such call")
            call, fresh = current, True
            continue
        values = dict(columns)
        now = context.now()
        if action is Action.ACCEPT:
            values["answered_at"] = now
        if result.state.is_terminal:
            values["reason"] = result.reason if result.reason is not None else reason
            values["ended_by"] = party.value
            values["ended_at"] = now
        # the new state and the events announcing it commit together
        parties = (call.caller_id, call.callee_id)
        async with event_hub(context).transaction(parties) as outbox:
            updated = await storage.calls.update_call_state(
                call.call_id,
                expected_state=call.state,
                new_state=result.state,
                connection=outbox.connection,
                **values,
            )
            if updated is not None:
                _queue_change(context, outbox, updated, action, reason_detail, answered_on)
        if updated is not None:
            logger.info("call %s: %s %s -> %s", call.call_id, party, action, updated.state)
            if updated.state.is_terminal:
                relay = _relay(context)
                if relay is not None:
                    relay.release(call.call_id)
            return updated
        # lost a race: judge the action again against what the call is now
        current = await storage.calls.get_call(call.call_id)
        if current is None:  # pragma: no cover - calls are never deleted
            raise api_error(status.HTTP_404_NOT_FOUND, "no such call")
        call, fresh = current, True
    raise api_error(
        status.HTTP_409_CONFLICT, "the call changed while this request was handled; try again"
    )


def _queue_change(
    context: AppContext,
    outbox: Outbox,
    call: CallRecord,
    action: Action,
    reason_detail: str | None = None,
    answered_on: tuple[bytes | None, str | None] | None = None,
) -> None:
    """Queue the events that announce ``call``'s change on the request's outbox."""
    if action is Action.ACCEPT:
        grant = relay_grant(context, call, Party.CALLER)
        to_caller = detail(call, handshake=("answer",), relay=grant)
        outbox.publish(call.caller_id, EVENT_CALL_ACCEPTED, to_caller.model_dump(mode="json"))
        # the callee's other phones stop ringing
        outbox.publish(call.callee_id, EVENT_CALL_ACCEPTED, view(call).model_dump(mode="json"))
        if answered_on is not None:  # several devices: say which one answered (issue 22)
            device_id, device_name = answered_on
            elsewhere = {
                "call_id": call.call_id,
                "device_id": None if device_id is None else device_id.hex(),
                "device_name": device_name,
            }
            outbox.publish(call.callee_id, EVENT_CALL_ANSWERED_ELSEWHERE, elsewhere)
    elif action is Action.CONFIRM:
        to_callee = detail(call, handshake=("confirm",))
        outbox.publish(call.callee_id, EVENT_CALL_CONFIRMED, to_callee.model_dump(mode="json"))
    elif call.state.is_terminal:
        ended = view(call).model_copy(update={"detail": reason_detail})
        payload = ended.model_dump(mode="json")
        for account_id in (call.caller_id, call.callee_id):
            outbox.publish(account_id, EVENT_FOR_END[call.state], payload)
