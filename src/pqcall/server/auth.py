"""Login by challenge-response, and bearer tokens.

::

    phone                                   server
      POST /auth/challenge {username}  ->   32 random bytes, single use, expires
      POST /auth/login {username, challenge,
            signature}                 ->   token (32 random bytes), expires

The signature is a device key's hybrid signature (issue 22: the device named by
the login's ``device_id``, which must be in the account's current device list;
without ``device_id``, as older phones log in, the account key's own device,
which every account has until a device list leaves it out), context
:data:`~pqcall.signaling.messages.LOGIN_CONTEXT`, over
:func:`~pqcall.signaling.messages.login_signed_data` (server name, username,
challenge): a challenge signed for one server cannot be replayed at another,
and each challenge can be used once, whatever the outcome. Neither route tells
whether a name has an account: an unknown name gets a challenge too, and its
login fails like a bad signature (checked against :func:`decoy_identity`). The server stores
only the SHA-256 of a token, with its expiry, so a stolen database yields no
usable token and tokens survive a restart. A token remembers its device: a
device dropped from the account's list loses its tokens and sockets at once
(:func:`revoke_tokens`).

Every other authenticated request sends ``Authorization: Bearer <token>``;
:func:`current_account` is the dependency that checks it.

Logging out revokes the request's token (``POST /auth/logout``) or every token
of the account (``POST /auth/logout/everywhere``): :func:`revoke` and
:func:`revoke_account` delete them from storage, then announce a
:class:`Revocation` on the process's :class:`Revocations`, which the push hub
honours by closing the WebSockets opened with those tokens (4401), so a
logged-out phone stops receiving calls at once, not when its token expires.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import HTTPBearer

from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.exceptions import BadSignature, DecodeError, ServerError
from pqcall.server.context import AppContext, Context, api_error
from pqcall.server.storage import AccountRecord, ChallengeUse, Storage
from pqcall.server.storage.account_store import device_id_of
from pqcall.server.storage.login_store import TokenInfo
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
REVOCATIONS_EXTRA = "revocations"  # context.extras key of the Revocations

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
    """The account a bearer token (as sent, base64url) belongs to (:func:`authenticate`)."""
    return (await authenticate(storage, token_text, now)).account


async def authenticate(storage: Storage, token_text: str, now: float) -> TokenInfo:
    """The account, expiry and device a bearer token (as sent, base64url) stands for.

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
    found = await storage.logins.token_info(hash_token(token))
    if found is None:
        raise AuthError("bearer token is not valid")
    if found.expires_at <= now:
        raise AuthError("bearer token has expired; log in again")
    return found


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


async def current_token(
    request: Request,
    context: Context,
    _scheme: Annotated[object, Depends(bearer_scheme)],
) -> TokenInfo:
    """FastAPI dependency: the authenticated account with its token's device, or 401."""
    try:
        return await authenticate(context.storage, bearer_token(request), context.now())
    except AuthError as exc:
        raise api_error(status.HTTP_401_UNAUTHORIZED, str(exc), AUTHENTICATE) from None


CurrentToken = Annotated[TokenInfo, Depends(current_token)]
"""Route parameter type that receives the token's account and device (issue 22)."""


@functools.cache
def decoy_identity() -> IdentityPublicKey:
    """A public identity whose private key was dropped at once: no signature verifies under it.

    Logins for names without an account are checked against it (made once per process).
    """
    return IdentityPrivateKey.generate().public_key()


async def account_named(context: AppContext, username: str) -> AccountRecord:
    """The account called ``username`` (normalized), or 404 (cached: ``last_seen`` may be stale)."""
    account = await context.storage.accounts.find_account_by_name(username)
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
    if body.device_id is not None:
        device_id = bytes.fromhex(body.device_id)
    else:  # an older phone: the device whose key is the account key
        device_id = bytes(16) if account is None else device_id_of(account.identity)
    # an unknown name looks its device up too (account 0 has none): same work
    device = await context.storage.devices.get_device(
        0 if account is None else account.id, device_id
    )
    device_key = None if account is None or device is None else device.public_key
    try:
        # an unknown name or device is checked against a key nobody holds: same work, same failure
        identity = decoy_identity() if device_key is None else IdentityPublicKey.decode(device_key)
        identity.verify(
            body.signature,
            login_signed_data(context.settings.server_name, body.username, body.challenge),
            context=LOGIN_CONTEXT,
        )
    except (BadSignature, DecodeError):
        logger.info("login refused: bad signature for %s", body.username)
        raise api_error(status.HTTP_401_UNAUTHORIZED, "login signature does not verify") from None
    if account is None or device_key is None:  # only if someone forged the decoy's signature
        raise api_error(status.HTTP_401_UNAUTHORIZED, "login signature does not verify")
    token = secrets.token_bytes(TOKEN_LENGTH)
    expires = now + context.settings.token_ttl_s
    await context.storage.logins.create_token(hash_token(token), account.id, expires, device_id)
    await context.storage.accounts.touch_last_seen(account.id, now)
    logger.info("login: %s", account.username)
    return LoginResponse(token=b64encode(token), expires=expires)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(request: Request, account: CurrentAccount, context: Context) -> Response:
    """Revoke the bearer token of this request; push sockets opened with it are closed."""
    token = b64decode(bearer_token(request))
    await revoke(context, hash_token(token))
    logger.info("logout: %s", account.username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/logout/everywhere", status_code=status.HTTP_204_NO_CONTENT)
async def logout_everywhere(account: CurrentAccount, context: Context) -> Response:
    """Revoke every token of this account (every phone and browser); their sockets close."""
    count = await revoke_account(context, account.id)
    logger.info("logout everywhere: %s (%d tokens)", account.username, count)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- revocation


@dataclass(frozen=True, slots=True)
class Revocation:
    """Tokens that stopped being valid: what a push connection opened with them must drop."""

    token_hashes: frozenset[bytes] = frozenset()
    """SHA-256 of each revoked token (:func:`hash_token`)."""
    account_id: int | None = None
    """Set when every token of this account was revoked ("log out everywhere")."""

    def covers(self, token_hash: bytes, account_id: int) -> bool:
        """Whether a connection of ``account_id`` opened with ``token_hash`` is revoked."""
        return account_id == self.account_id or token_hash in self.token_hashes


RevocationListener = Callable[[Revocation], None]
"""Called at once, on the event loop, for each revocation (it must not block)."""


class Revocations:
    """Where revocations are announced, after storage has forgotten the tokens.

    The push hub subscribes and closes the sockets a revocation covers. On one
    process, :meth:`publish` calls the listeners directly; a multi-process bus
    would carry each :class:`Revocation` to the other processes and call
    :meth:`publish` there (it is plain data). Storage is the truth either way: a
    token deleted there is refused by every later request and WebSocket handshake.
    """

    def __init__(self) -> None:
        self._listeners: list[RevocationListener] = []  # the push hub, in practice

    def subscribe(self, listener: RevocationListener) -> None:
        """Call ``listener`` for every later revocation."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: RevocationListener) -> None:
        """Stop calling ``listener`` (no-op if it was not subscribed)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def publish(self, revocation: Revocation) -> None:
        """Tell every listener; one that raises is logged and the others still run."""
        for listener in list(self._listeners):
            try:
                listener(revocation)
            except Exception:
                logger.exception("revocation listener %r failed", listener)


def revocations(context: AppContext) -> Revocations:
    """The process's :class:`Revocations` (``context.extras["revocations"]``, made on first use)."""
    found = context.extras.get(REVOCATIONS_EXTRA)
    if not isinstance(found, Revocations):
        found = Revocations()
        context.extras[REVOCATIONS_EXTRA] = found
    return found


async def revoke(context: AppContext, token_hash: bytes) -> None:
    """Revoke one token: forget it in storage, then announce it (its sockets close)."""
    await context.storage.logins.delete_token(token_hash)
    revocations(context).publish(Revocation(token_hashes=frozenset({token_hash})))


async def revoke_tokens(context: AppContext, token_hashes: list[bytes]) -> None:
    """Announce tokens storage already deleted (a device dropped, a recovery): sockets close."""
    context.storage.logins.forget_tokens(token_hashes)
    if token_hashes:
        revocations(context).publish(Revocation(token_hashes=frozenset(token_hashes)))


async def revoke_account(context: AppContext, account_id: int) -> int:
    """Revoke every token of an account, then announce it; how many tokens there were."""
    count = await context.storage.logins.delete_account_tokens(account_id)
    revocations(context).publish(Revocation(account_id=account_id))
    return count
