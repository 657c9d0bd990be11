"""An account's devices (issue 22): its signed device list, and recovery with the recovery key.

``PUT /account/devices`` stores a newer device list. The server checks what it
can without trusting anyone: the list decodes, names the caller, is signed by
the account key (``accounts.identity``, which only the person's devices hold),
its version is above the stored one (compare-and-set, so no rollback and no two
lists of one version), and it holds 1 to 16 devices whose ids match their keys.
Contacts check the same signature themselves under the account key they
pinned, so a server cannot add a device unseen; the server's checks only keep
junk out. Devices that leave the list lose their tokens and push sockets at
once (4401 "logged out"). The recovery key's public half travels in the list
and is stored with it; once stored, no list may change or drop it (409): a
thief with a linked device's account key cannot lock the owner out of
recovery, and the owner's recovery then shuts the thief out.

``POST /account/recover`` (no login) replaces an account's key, key bundle and
device list when the request is signed by the account's stored recovery key
over :func:`pqcall.crypto.recovery.recover_signed_data`; every token of the
account is revoked. An unknown name, an account without a recovery key and a
bad signature get the same 403, so the route tells nobody which names have a
recovery key. Logged at WARNING (never a key).

Both are rate limited per account or address (:data:`DEVICE_LIST_LIMIT`,
:data:`RECOVER_LIMIT`, scaled like every limit by ``rate_limit_scale``).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, status

from pqcall.crypto.account import SignedDeviceList
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.recovery import RECOVER_CONTEXT, recover_signed_data
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError
from pqcall.server.auth import CurrentAccount, revoke_tokens
from pqcall.server.context import AppContext, Context, api_error
from pqcall.server.ratelimit import RateLimit, RateLimiter, client_key, retry_after_header
from pqcall.server.storage import AccountRecord, StaleDeviceList
from pqcall.server.storage.device_store import NewDevice
from pqcall.server.storage.records import RecoveryKeyFixed
from pqcall.signaling.account_messages import (
    DevicesView,
    DeviceView,
    PutDeviceListRequest,
    RecoverRequest,
)
from pqcall.signaling.messages import UserView

logger = logging.getLogger(__name__)

DEVICE_LIST_LIMIT = RateLimit(rate_per_s=1.0 / 60.0, burst=10.0)  # per account
RECOVER_LIMIT = RateLimit(rate_per_s=1.0 / 60.0, burst=5.0)  # per client address
LIMITERS_EXTRA = "route-limiters"  # context.extras key: name -> RateLimiter
MAX_BUNDLE_CREATED = 2**63 - 1

router = APIRouter(tags=["devices"])


def route_limit(context: AppContext, name: str, limit: RateLimit, key: str) -> None:
    """Take one token from ``key``'s bucket of the route limit ``name``, or 429.

    The limit is scaled by ``rate_limit_scale`` (0: off, as in most tests).
    """
    scale = context.settings.rate_limit_scale
    if scale <= 0:
        return
    limiters = context.extras.setdefault(LIMITERS_EXTRA, {})
    limiter = limiters.get(name)
    if not isinstance(limiter, RateLimiter):
        scaled = RateLimit(limit.rate_per_s * scale, max(1.0, limit.burst * scale))
        limiter = limiters[name] = RateLimiter(scaled)
    decision = limiter.check(key, context.now())
    if not decision.allowed:
        seconds = retry_after_header(decision.retry_after_s)
        raise api_error(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many requests, retry in {seconds} s",
            {"Retry-After": seconds},
        )


def address_of(request: Request) -> str:
    """The rate-limit key of the request's client address."""
    return client_key(request.client.host) if request.client is not None else "unknown"


def _verified_list(
    encoded: bytes, account_key: IdentityPublicKey, username: str
) -> SignedDeviceList:
    """Decode and verify a signed device list for ``username`` under ``account_key``, or 400."""
    try:
        signed = SignedDeviceList.decode(encoded)
        signed.verify(account_key, username)
    except DecodeError as exc:
        raise api_error(status.HTTP_400_BAD_REQUEST, f"device list is malformed: {exc}") from None
    except LocalProtocolError as exc:
        raise api_error(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except BadSignature:
        raise api_error(
            status.HTTP_400_BAD_REQUEST, "device list is not signed by the account key"
        ) from None
    return signed


def _new_devices(signed: SignedDeviceList) -> list[NewDevice]:
    return [
        NewDevice(device.device_id, device.name, device.public.encode())
        for device in signed.device_list.devices
    ]


async def devices_view(context: AppContext, account: AccountRecord) -> DevicesView:
    """The caller's stored list and the devices the server holds for it."""
    stored = await context.storage.devices.device_list(account.id)
    listed = await context.storage.devices.list_devices(account.id)
    return DevicesView(
        version=stored.version,
        device_list=stored.signed,
        devices=[
            DeviceView(device_id=device.device_id.hex(), name=device.name, added=device.added)
            for device in listed
        ],
    )


@router.get("/account/devices")
async def get_devices(account: CurrentAccount, context: Context) -> DevicesView:
    """The caller's signed device list and devices."""
    return await devices_view(context, account)


@router.put("/account/devices", responses={429: {"description": "too many device lists"}})
async def put_devices(
    body: PutDeviceListRequest, account: CurrentAccount, context: Context
) -> DevicesView:
    """Store a newer device list signed by the account key; dropped devices are logged out.

    400: malformed, another name's, or not signed by the account key; 409: its
    version is not above the stored one, or it changes or drops the stored
    recovery key; 429: too many lists.
    """
    route_limit(context, "device-list", DEVICE_LIST_LIMIT, f"account:{account.id}")
    account_key = IdentityPublicKey.decode(account.identity)
    signed = _verified_list(body.device_list, account_key, account.username)
    device_list = signed.device_list
    recovery = None if device_list.recovery is None else device_list.recovery.encode()
    try:
        gone = await context.storage.devices.put_device_list(
            account.id,
            body.device_list,
            device_list.version,
            _new_devices(signed),
            recovery,
            context.now(),
        )
    except RecoveryKeyFixed:
        raise api_error(
            status.HTTP_409_CONFLICT,
            "a device list cannot change or drop the recovery key; only a recovery replaces it",
        ) from None
    except StaleDeviceList:
        stored = await context.storage.devices.device_list(account.id)
        raise api_error(
            status.HTTP_409_CONFLICT,
            f"device list version {device_list.version} is not newer than"
            f" the stored version {stored.version}",
        ) from None
    await revoke_tokens(context, gone)
    logger.info(
        "device list of %s is version %d (%d devices, %d tokens revoked)",
        account.username,
        device_list.version,
        len(device_list.devices),
        len(gone),
    )
    return await devices_view(context, account)


RECOVER_REFUSED = (
    "recovery refused: no recovery key for this name, or the signature does not verify"
)


@router.post("/account/recover", responses={403: {"description": "recovery refused"}})
async def recover(body: RecoverRequest, request: Request, context: Context) -> UserView:
    """Replace an account's key, bundle and device list, signed by its recovery key.

    403 (always the same sentence): unknown name, no recovery key stored, or a
    bad signature; 400: the new key, list or bundle is malformed or does not
    verify under the new key; 429: too many attempts from this address.
    """
    route_limit(context, "recover", RECOVER_LIMIT, address_of(request))
    try:
        new_identity = IdentityPublicKey.decode(body.new_identity)
    except DecodeError as exc:
        raise api_error(status.HTTP_400_BAD_REQUEST, f"new identity is malformed: {exc}") from None
    signed = _verified_list(body.device_list, new_identity, body.username)
    try:
        bundle = KeyBundle.decode(body.key_bundle)
        bundle.verify(new_identity)
    except (DecodeError, BadSignature) as exc:
        raise api_error(status.HTTP_400_BAD_REQUEST, f"key bundle: {exc}") from None
    if bundle.username != body.username or not 0 <= bundle.created <= MAX_BUNDLE_CREATED:
        raise api_error(status.HTTP_400_BAD_REQUEST, "key bundle is for another name or time")
    account = await context.storage.accounts.get_account_by_name(body.username)
    stored = None if account is None else await context.storage.devices.device_list(account.id)
    try:
        if account is None or stored is None or stored.recovery_key is None:
            raise BadSignature("no recovery key")
        IdentityPublicKey.decode(stored.recovery_key).verify(
            body.signature,
            recover_signed_data(
                context.settings.server_name, body.username, body.new_identity, body.device_list
            ),
            context=RECOVER_CONTEXT,
        )
    except (BadSignature, DecodeError):
        logger.warning("recovery refused for %s", body.username)
        raise api_error(status.HTTP_403_FORBIDDEN, RECOVER_REFUSED) from None
    assert account is not None  # refused above otherwise
    device_list = signed.device_list
    gone = await context.storage.devices.recover_account(
        account.id,
        new_identity.encode(),
        bundle.encode(),
        bundle.created,
        body.device_list,
        device_list.version,
        _new_devices(signed),
        None if device_list.recovery is None else device_list.recovery.encode(),
        context.now(),
    )
    await revoke_tokens(context, gone)
    logger.warning(
        "account %s recovered with its recovery key: new account key, %d devices,"
        " %d tokens revoked",
        account.username,
        len(device_list.devices),
        len(gone),
    )
    return UserView(
        username=account.username,
        identity=new_identity.encode(),
        key_bundle=bundle.encode(),
        created=account.created,
        device_list=body.device_list,
    )
