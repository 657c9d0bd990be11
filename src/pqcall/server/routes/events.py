"""``GET /events``: the push WebSocket of a logged-in phone.

The token comes in ``Authorization: Bearer <token>`` or, for browsers (which
cannot set headers on a WebSocket), the ``token`` query parameter. The
handshake is always accepted, so that a refusal can carry a reason a browser
can read: a missing, invalid or expired token closes the socket with code 4401
and the reason, a bad ``resume`` with 4400. Logging out (the token, or every
token of the account) closes the socket at once with 4401 "logged out". What follows is
:class:`pqcall.server.push.PushConnection`'s protocol.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket

from pqcall.server.auth import AuthError, authenticate_token, hash_token
from pqcall.server.context import AppContext
from pqcall.server.push import (
    CLOSE_BAD_MESSAGE,
    CLOSE_UNAUTHORIZED,
    ConnectionClosing,
    event_hub,
)
from pqcall.server.storage import AccountRecord
from pqcall.signaling.messages import b64decode

logger = logging.getLogger(__name__)

MAX_RESUME_DIGITS = 19  # a signed 64-bit seq

router = APIRouter(tags=["events"])


@router.websocket("/events")
async def events(websocket: WebSocket) -> None:
    """Push events: stored ones after ``resume``, then live ones; see the module docstring."""
    context: AppContext = websocket.app.state.context
    await websocket.accept()
    try:
        account, expires_at, token_hash = await _authenticate(context, websocket)
        resume = _resume(websocket.query_params.get("resume"))
    except ConnectionClosing as refusal:
        await websocket.close(refusal.code, refusal.reason)
        return
    await event_hub(context).serve(websocket, account, resume, expires_at, token_hash)


async def _authenticate(
    context: AppContext, websocket: WebSocket
) -> tuple[AccountRecord, float, bytes]:
    """The account, its token's expiry and the token's hash, from the header or ``token``."""
    header = websocket.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ConnectionClosing(
                CLOSE_UNAUTHORIZED, "Authorization header must be 'Bearer <token>'"
            )
        token = token.strip()
    else:
        token = websocket.query_params.get("token", "")
        if not token:
            raise ConnectionClosing(
                CLOSE_UNAUTHORIZED, "missing token (Authorization header or token parameter)"
            )
    try:
        account = await authenticate_token(context.storage, token, context.now())
    except AuthError as exc:
        raise ConnectionClosing(CLOSE_UNAUTHORIZED, str(exc)) from None
    token_hash = hash_token(b64decode(token))
    found = await context.storage.logins.account_for_token(token_hash)
    if found is None:  # logged out in between
        raise ConnectionClosing(CLOSE_UNAUTHORIZED, "bearer token is not valid")
    return account, found[1], token_hash


def _resume(text: str | None) -> int:
    if text is None:
        return 0
    if not text.isascii() or not text.isdigit() or len(text) > MAX_RESUME_DIGITS:
        raise ConnectionClosing(CLOSE_BAD_MESSAGE, "resume must be a non-negative integer")
    return int(text)
