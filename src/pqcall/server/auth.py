"""Login by challenge-response, and bearer tokens.

::

    phone                                   server
      POST /auth/challenge {username}  ->   32 random bytes, single use, expires
      POST /auth/login {username, challenge,
            signature}                 ->   token (32 random bytes), expires

The signature is the account identity's hybrid signature, context
:data:`~pqcall.signaling.messages.LOGIN_CONTEXT`, over
:func:`~pqcall.signaling.messages.login_signed_data` (server name, username,
challenge): a challenge signed for one server cannot be replayed at another,
and each challenge can be used once, whatever the outcome. Neither route tells
whether a name has an account: an unknown name gets a challenge too, and its
login fails like a bad signature (checked against :func:`decoy_identity`). The server stores
only the SHA-256 of a token, with its expiry, so a stolen database yields no
usable token and tokens survive a restart.

Every other authenticated request sends ``Authorization: Bearer <token>``;
:func:`current_account` is the dependency that checks it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import HTTPBearer

from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.exceptions import BadSignature, DecodeError, ServerError
from pqcall.server.context import AppContext, Context, api_error
from pqcall.server.storage import AccountRecord, ChallengeUse, Storage
from pqcall.signaling.messages import (
    CHALLENGE_LENGTH,
    LOGIN_CONTEXT,
    TOKEN_LENGTH,
    ChallengeRequest,
    ChallengeResponse,
    LoginRequest,
    LoginResponse,
    b64decode,
    b64encode,
    login_signed_data,
)

logger = logging.getLogger(__name__)

AUTHENTICATE = {"WWW-Authenticate": "Bearer"}

_CHALLENGE_ERRORS = {
    ChallengeUse.UNKNOWN: "challenge is unknown; request a new one",
    ChallengeUse.USED: "challenge was already used; request a new one",
    ChallengeUse.EXPIRED: "challenge has expired; request a new one",
}

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="the token from POST /auth/login",
)


class AuthError(ServerError):
    """A bearer token was refused; the message says why (HTTP 401)."""


def hash_token(token: bytes) -> bytes:
    """What the database stores for a token: its SHA-256."""
    return hashlib.sha256(token).digest()


async def authenticate_token(storage: Storage, token_text: str, now: float) -> AccountRecord:
    """The account a bearer token (as sent, base64url) belongs to.

    For every transport that carries a token: the HTTP dependency below and
    the WebSocket handshake.

    Raises:
        AuthError: the token is malformed, unknown, revoked or expired.
    """
    try:
        token = b64decode(token_text)
    except ValueError:
        raise AuthError("bearer token is not valid") from None
    if len(token) != TOKEN_LENGTH:
        raise AuthError("bearer token is not valid")
    found = await storage.logins.account_for_token(hash_token(token))
    if found is None:
        raise AuthError("bearer token is not valid")
    account, expires_at = found
    if expires_at <= now:
        raise AuthError("bearer token has expired; log in again")
    return account


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header.

    Raises:
        AuthError: no such header, or another scheme.
    """
    header = request.headers.get("authorization")
    if header is None:
        raise AuthError("missing Authorization: Bearer token; log in first")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <token>'")
    return token.strip()


async def current_account(
    request: Request,
    context: Context,
    _scheme: Annotated[object, Depends(bearer_scheme)],
) -> AccountRecord:
    """FastAPI dependency: the authenticated account, or 401 with the reason."""
    try:
        return await authenticate_token(context.storage, bearer_token(request), context.now())
    except AuthError as exc:
        raise api_error(status.HTTP_401_UNAUTHORIZED, str(exc), AUTHENTICATE) from None


CurrentAccount = Annotated[AccountRecord, Depends(current_account)]
"""Route parameter type that receives the authenticated account."""


@functools.cache
def decoy_identity() -> IdentityPublicKey:
    """A public identity whose private key was dropped at once: no signature verifies under it.

    Logins for names without an account are checked against it (made once per process).
    """
    return IdentityPrivateKey.generate().public_key()


async def account_named(context: AppContext, username: str) -> AccountRecord:
    """The account called ``username`` (normalized), or 404."""
    account = await context.storage.accounts.get_account_by_name(username)
    if account is None:
        raise api_error(status.HTTP_404_NOT_FOUND, f"no user named {username!r}")
    return account


router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/challenge")
async def challenge(body: ChallengeRequest, context: Context) -> ChallengeResponse:
    """A single-use login challenge for ``username``, whether or not it is an account's.

    An unknown name gets a challenge like any other (same shape, same work: one
    insert), and the login that follows fails as a wrong signature does, so the
    two routes do not tell who has an account.
    """
    value = secrets.token_bytes(CHALLENGE_LENGTH)
    expires = context.now() + context.settings.challenge_ttl_s
    await context.storage.logins.create_challenge(body.username, value, expires)
    return ChallengeResponse(
        challenge=value, expires=expires, server_name=context.settings.server_name
    )


@router.post("/login")
async def login(body: LoginRequest, context: Context) -> LoginResponse:
    """Trade a signed challenge for a bearer token."""
    now = context.now()
    # burn the challenge first: it is single use whether or not the signature verifies
    use = await context.storage.logins.use_challenge(body.username, body.challenge, now)
    if use is not ChallengeUse.OK:
        raise api_error(status.HTTP_401_UNAUTHORIZED, _CHALLENGE_ERRORS[use])
    account = await context.storage.accounts.get_account_by_name(body.username)
    try:
        # an unknown name is checked against a key nobody holds: same work, same failure
        identity = (
            decoy_identity() if account is None else IdentityPublicKey.decode(account.identity)
        )
        identity.verify(
            body.signature,
            login_signed_data(context.settings.server_name, body.username, body.challenge),
            context=LOGIN_CONTEXT,
        )
    except (BadSignature, DecodeError):
        logger.info("login refused: bad signature for %s", body.username)
        raise api_error(status.HTTP_401_UNAUTHORIZED, "login signature does not verify") from None
    if account is None:  # only if someone forged a signature by the decoy key
        raise api_error(status.HTTP_401_UNAUTHORIZED, "login signature does not verify")
    token = secrets.token_bytes(TOKEN_LENGTH)
    expires = now + context.settings.token_ttl_s
    await context.storage.logins.create_token(hash_token(token), account.id, expires)
    await context.storage.accounts.touch_last_seen(account.id, now)
    logger.info("login: %s", account.username)
    return LoginResponse(token=b64encode(token), expires=expires)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(request: Request, account: CurrentAccount, context: Context) -> Response:
    """Revoke the bearer token of this request."""
    token = b64decode(bearer_token(request))
    await context.storage.logins.delete_token(hash_token(token))
    logger.info("logout: %s", account.username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
