"""Registration, the directory, key-bundle rotation and presence.

A directory entry (``GET /users/{name}``) carries the account's signed device
list as stored (issue 22; ``null`` until the account sends one): the asker
verifies it under the account key it pinned (``pqcall.server.routes.devices``).

Presence answers only for users who let the asker see it (they called the
asker, or answered the asker's call), with ``last_seen`` rounded to 5 minutes;
anyone else is left out like an unknown name (``docs/server.md#presence``).

Registration is proof of possession: the request is signed by the identity it
registers (context :data:`~pqcall.signaling.messages.REGISTER_CONTEXT`, over
:func:`~pqcall.signaling.messages.register_signed_data`), and the key bundle
must verify under that identity and name the same username. A name belongs to
the first identity that registers it; repeating a registration with the same
identity is harmless (and may bring a newer key bundle).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.exceptions import BadSignature, DecodeError
from pqcall.server.auth import CurrentAccount, account_named
from pqcall.server.context import AppContext, Context, api_error
from pqcall.server.presence import rounded_last_seen
from pqcall.server.storage import AccountRecord, UsernameTaken
from pqcall.signaling import usernames
from pqcall.signaling.messages import (
    MAX_PRESENCE_NAMES,
    REGISTER_CONTEXT,
    Presence,
    PresenceResponse,
    PutBundleRequest,
    RegisterRequest,
    UserView,
    register_signed_data,
)

logger = logging.getLogger(__name__)

MAX_BUNDLE_CREATED = 2**63 - 1  # a signed 64-bit column on both databases

router = APIRouter(tags=["accounts"])


def _check_bundle(encoded: bytes, identity: IdentityPublicKey, username: str) -> KeyBundle:
    """Decode and verify a key bundle for ``username`` under ``identity``, or 400."""
    try:
        bundle = KeyBundle.decode(encoded)
        bundle.verify(identity)
    except DecodeError as exc:
        raise api_error(status.HTTP_400_BAD_REQUEST, f"key bundle is malformed: {exc}") from None
    except BadSignature as exc:
        raise api_error(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if bundle.username != username:
        raise api_error(
            status.HTTP_400_BAD_REQUEST,
            f"key bundle names {bundle.username!r}, not {username!r}",
        )
    if bundle.created > MAX_BUNDLE_CREATED:
        raise api_error(status.HTTP_400_BAD_REQUEST, "key bundle creation time is out of range")
    return bundle


async def _user_view(context: AppContext, account: AccountRecord) -> UserView:
    bundle, device_list = await context.storage.devices.directory_entry(account.id)
    assert bundle is not None, "every account is created with a key bundle"
    return UserView(
        username=account.username,
        identity=account.identity,
        key_bundle=bundle.bundle,
        created=account.created,
        device_list=device_list,
    )


async def _refresh_bundle(context: AppContext, account: AccountRecord, bundle: KeyBundle) -> bool:
    """Store ``bundle`` if it is newer than the current one; whether it was."""
    current = await context.storage.accounts.current_bundle(account.id)
    if current is not None and bundle.created <= current.bundle_created:
        return False
    await context.storage.accounts.put_bundle(
        account.id, bundle.encode(), bundle.created, context.now()
    )
    return True


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": UserView, "description": "already registered with this identity"}},
)
async def register(body: RegisterRequest, response: Response, context: Context) -> UserView:
    """Claim a username for an identity (201), or repeat a registration (200)."""
    # check the proof of possession before touching the database
    try:
        identity = IdentityPublicKey.decode(body.identity)
    except DecodeError as exc:
        raise api_error(status.HTTP_400_BAD_REQUEST, f"identity is malformed: {exc}") from None
    signed = register_signed_data(context.settings.server_name, body.username, body.identity)
    try:
        identity.verify(body.signature, signed, context=REGISTER_CONTEXT)
    except BadSignature:
        raise api_error(
            status.HTTP_400_BAD_REQUEST, "registration signature does not verify"
        ) from None
    bundle = _check_bundle(body.key_bundle, identity, body.username)

    try:
        account = await context.storage.accounts.create_account(
            body.username, identity.encode(), bundle.encode(), bundle.created, context.now()
        )
    except UsernameTaken:
        existing = await context.storage.accounts.get_account_by_name(body.username)
        if existing is None or existing.identity != identity.encode():
            raise api_error(status.HTTP_409_CONFLICT, "username is taken") from None
        await _refresh_bundle(context, existing, bundle)
        response.status_code = status.HTTP_200_OK
        return await _user_view(context, existing)
    logger.info("registered %s", account.username)
    return await _user_view(context, account)


@router.get("/users/{name}")
async def get_user(name: str, account: CurrentAccount, context: Context) -> UserView:
    """A user's identity and current key bundle."""
    try:
        username = usernames.normalize(name)
    except usernames.InvalidUsername as exc:
        raise api_error(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return await _user_view(context, await account_named(context, username))


@router.put("/keys/bundle")
async def put_bundle(body: PutBundleRequest, account: CurrentAccount, context: Context) -> UserView:
    """Replace the caller's key bundle with a newer one signed by the same identity."""
    identity = IdentityPublicKey.decode(account.identity)
    bundle = _check_bundle(body.key_bundle, identity, account.username)
    current = await context.storage.accounts.current_bundle(account.id)
    if current is not None and bundle.encode() != current.bundle:
        if not await _refresh_bundle(context, account, bundle):
            raise api_error(
                status.HTTP_409_CONFLICT, "key bundle is not newer than the current one"
            )
        logger.info("key bundle rotated: %s", account.username)
    return await _user_view(context, account)


@router.get("/presence")
async def presence(
    account: CurrentAccount,
    context: Context,
    names: Annotated[
        str,
        Query(
            max_length=MAX_PRESENCE_NAMES * (usernames.MAX_USERNAME_LENGTH + 1),
            description=f"comma-separated usernames, at most {MAX_PRESENCE_NAMES}",
        ),
    ],
) -> PresenceResponse:
    """Online/offline and last-seen time (rounded) of the named users who let the asker see it.

    A user lets the asker see their presence by having called the asker or
    answered the asker's call (and everyone sees their own). Everyone else is
    left out, exactly like a name without an account, so a stranger learns
    nothing, not even whether the name exists.
    """
    raw = [part.strip() for part in names.split(",") if part.strip()]
    if len(raw) > MAX_PRESENCE_NAMES:
        raise api_error(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"names: at most {MAX_PRESENCE_NAMES} usernames per request",
        )
    try:
        wanted = {usernames.normalize(name) for name in raw}
    except usernames.InvalidUsername as exc:
        raise api_error(status.HTTP_422_UNPROCESSABLE_CONTENT, f"names: {exc}") from None
    found = await context.storage.accounts.get_accounts_by_names(wanted)
    granted = await context.storage.calls.presence_granted(account.id, [u.id for u in found])
    granted.add(account.id)
    return PresenceResponse(
        users=[
            Presence(
                username=user.username,
                online=context.presence.is_online(user.id),
                last_seen=rounded_last_seen(user.last_seen),
            )
            for user in found
            if user.id in granted
        ]
    )
