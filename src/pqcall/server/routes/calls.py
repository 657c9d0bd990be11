"""The call routes: ``/call/initiate|accept|confirm|reject|hangup``, status, pending, history.

Thin: each route authenticates (401), validates its body (422) and hands over
to :mod:`pqcall.server.call_service`, which decides 403 (not a party), 404 (no such
call or user), 409 (the state table forbids the action, or a lost race) and
pushes the events. The flow, for a phone::

    caller                        server                          callee
    POST /call/initiate   ->  ringing      -> call.incoming (offer)  ->
                          <-  call.accepted (answer)  <-  POST /call/accept
    POST /call/confirm    ->  active       -> call.confirmed (confirm) ->
    POST /call/hangup     ->  ended        -> call.ended              ->
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status

from pqcall.server import call_service
from pqcall.server.auth import CurrentAccount, CurrentToken
from pqcall.server.context import Context, api_error, seen_address
from pqcall.signaling import usernames
from pqcall.signaling.callstate import Party
from pqcall.signaling.messages import (
    CALL_ID_PATTERN,
    MAX_HISTORY_CALLS,
    AcceptCall,
    CallDetail,
    CallHistory,
    CallView,
    ConfirmCall,
    ErrorResponse,
    HangupCall,
    InitiateCall,
    PendingCalls,
    RejectCall,
)

DEFAULT_HISTORY_CALLS = 50

router = APIRouter(
    tags=["calls"],
    responses={403: {"model": ErrorResponse, "description": "not a party to this call"}},
)


@router.post("/call/initiate", status_code=status.HTTP_201_CREATED)
async def initiate(
    body: InitiateCall, request: Request, account: CurrentAccount, context: Context
) -> CallView:
    """Call ``callee`` with a handshake offer; the callee's phones get ``call.incoming``."""
    call = await call_service.initiate(context, account, body, seen_address(request))
    return call_service.view(call)


@router.post("/call/accept")
async def accept(
    body: AcceptCall, request: Request, token: CurrentToken, context: Context
) -> CallDetail:
    """The callee answers with its handshake answer; the caller gets ``call.accepted``.

    The answer carries the callee's own relay grant (if the server relays this call).
    A callee with several devices gets ``call.answered_elsewhere`` naming the answering one.
    """
    call = await call_service.accept(
        context,
        token.account,
        body,
        seen_address(request),
        (token.device_id, token.device_name) if token.device_count > 1 else None,
    )
    grant = call_service.relay_grant(context, call, Party.CALLEE, request.url.hostname)
    return call_service.detail(call, handshake=(), relay=grant)


@router.post("/call/confirm")
async def confirm(body: ConfirmCall, account: CurrentAccount, context: Context) -> CallView:
    """The caller's handshake confirmation; the callee gets ``call.confirmed``."""
    return call_service.view(await call_service.confirm(context, account, body))


@router.post("/call/reject")
async def reject(body: RejectCall, account: CurrentAccount, context: Context) -> CallView:
    """The callee refuses a ringing call; both parties get ``call.rejected`` (with ``detail``)."""
    return call_service.view(await call_service.reject(context, account, body))


@router.post("/call/hangup")
async def hangup(body: HangupCall, account: CurrentAccount, context: Context) -> CallView:
    """Either party ends a call (or cancels or declines it while it rings).

    Both parties get ``call.ended``, ``call.missed`` (caller cancelled),
    ``call.rejected`` (callee declined) or ``call.failed`` (reason ``failed``, with
    the ``detail`` the failing phone gave, if any).
    """
    return call_service.view(await call_service.hangup(context, account, body))


@router.get("/call/status/{call_id}")
async def call_status(
    call_id: Annotated[str, Path(pattern=CALL_ID_PATTERN)],
    request: Request,
    account: CurrentAccount,
    context: Context,
) -> CallDetail:
    """Everything about a call, for one of its parties (with that party's own relay grant)."""
    call, party = await call_service.find_call(context, call_id, account)
    return call_service.detail(
        call, relay=call_service.relay_grant(context, call, party, request.url.hostname)
    )


@router.get("/call/pending/{name}")
async def pending(name: str, account: CurrentAccount, context: Context) -> PendingCalls:
    """Calls ringing for ``name`` (only the account itself may ask), oldest first.

    What a phone that just came online shows; the push WebSocket delivers the same.
    """
    try:
        username = usernames.normalize(name)
    except usernames.InvalidUsername as exc:
        raise api_error(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if username != account.username:
        raise api_error(status.HTTP_403_FORBIDDEN, "you can only list your own pending calls")
    ringing = await context.storage.calls.list_pending_calls_for(account.id)
    return PendingCalls(calls=[call_service.detail(call, handshake=("offer",)) for call in ringing])


@router.get("/calls/history")
async def history(
    account: CurrentAccount,
    context: Context,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_CALLS)] = DEFAULT_HISTORY_CALLS,
) -> CallHistory:
    """The account's calls, newest first: who, when, how each ended."""
    found = await context.storage.calls.list_calls_for(account.id, limit=limit)
    return CallHistory(calls=[call_service.view(call) for call in found])
