"""An account's devices, as a phone manages them: its own list, links, unlinks, rotation.

The crypto lives in :mod:`pqcall.crypto.account` (the signed device list) and
:mod:`pqcall.crypto.account_link` (the link request, code and sealed
response); this module drives the server's routes
(:mod:`pqcall.signaling.account_messages`, ``docs/server.md``) and the home:

- :func:`first_device_list` / :func:`ensure_device_list`: a home's list, made
  at registration (with the recovery key) or, for a home made before linked
  devices, made at the next use with the account key as the only device;
- :func:`publish_device_list`: ``PUT /account/devices``;
- :func:`approve_link` (existing device) and :func:`link_new_device` (new
  device): linking with the code the person carries between them;
- :func:`unlink_device` and :func:`rotate_device_key`;
- :func:`check_peer_devices`: a contact's list from ``GET /users/{name}``,
  verified under the *pinned* account key, with no rollback
  (:func:`pqcall.crypto.pinning.check_device_list`), remembered in
  ``peer_devices.json`` next to the contacts.

Every list this module signs is signed by the account key; a list the server
returns is never trusted before it verifies under the key we hold or pinned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pqcall.client.api import ServerApi
from pqcall.client.home import Home
from pqcall.client.privatefile import FileLock, read_bounded, write_atomic
from pqcall.crypto.account import (
    MAX_DEVICE_NAME_LENGTH,
    Device,
    DeviceList,
    SignedDeviceList,
    device_id,
)
from pqcall.crypto.account_link import LinkCode, LinkRequest, LinkResponse, NewDeviceLink
from pqcall.crypto.account_link import seal_response as seal_link_response
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey, sha256
from pqcall.crypto.keystore import DEFAULT_KDF_PARAMS, AccountSecrets, KdfParams
from pqcall.crypto.pinning import DevicesChanged, DevicesSeen, check_device_list
from pqcall.exceptions import (
    ApiError,
    BadSignature,
    CallError,
    DecodeError,
    KeystoreError,
    LocalProtocolError,
    RemoteProtocolError,
)
from pqcall.signaling.account_messages import (
    CreateLinkRequest,
    DevicesView,
    LinkCreated,
    LinkPoll,
    LinkRequestView,
    LinkResponseBody,
    LinkResponseView,
    PutDeviceListRequest,
)
from pqcall.signaling.messages import UserView

logger = logging.getLogger(__name__)

FIRST_DEVICE_NAME = "first device"
PEER_DEVICES_NAME = "peer_devices.json"
MAX_PEER_DEVICES_BYTES = 1024 * 1024
LINK_POLL_INTERVAL_S = 1.0
LINK_TIMEOUT_S = 600.0  # the server keeps a rendezvous 10 minutes


def default_device_name() -> str:
    """This machine's host name, usable as a device name, else ``"first device"``."""
    name = "".join(ch for ch in platform.node() if not unicodedata.category(ch).startswith("C"))
    return name[:MAX_DEVICE_NAME_LENGTH] or FIRST_DEVICE_NAME


def first_device_list(
    secrets: AccountSecrets,
    username: str,
    name: str,
    recovery: IdentityPublicKey | None = None,
    *,
    version: int = 1,
) -> SignedDeviceList:
    """A list with this device only (its device key, or the account key in an old home)."""
    device = Device.of(secrets.device_identity.public_key(), name)
    return SignedDeviceList.sign(
        DeviceList(username, version, (device,), recovery), secrets.identity
    )


def ensure_device_list(
    home: Home, secrets: AccountSecrets, username: str, name: str | None = None
) -> SignedDeviceList:
    """The home's signed device list; a home without one gets a v1 list (migration).

    Raises:
        KeystoreError: the stored list is corrupt or not signed by our account key.
    """
    signed = home.load_device_list(secrets.identity.public_key(), username)
    if signed is None:
        signed = first_device_list(secrets, username, name or FIRST_DEVICE_NAME)
        home.save_device_list(signed)
    return signed


async def publish_device_list(api: ServerApi, signed: SignedDeviceList) -> None:
    """``PUT /account/devices``: the server checks the signature and the version.

    Raises:
        ApiError: refused (409: not newer than the stored list; 400: bad signature).
    """
    await api.authed_request(
        "PUT", "/account/devices", PutDeviceListRequest(device_list=signed.encode())
    )


async def sync_device_list(
    api: ServerApi, home: Home, secrets: AccountSecrets, username: str
) -> SignedDeviceList:
    """Bring the home's list and the server's to the newer of the two (at each start).

    A home made before linked devices publishes its first list here; a list
    another device of the account published is taken once it verifies under
    our account key (a list that does not is ignored, with a warning).

    Raises:
        ApiError: the server refused the home's list.
    """
    ours = ensure_device_list(home, secrets, username)
    try:
        response = await api.authed_request("GET", "/account/devices")
    except ApiError as exc:
        if exc.status != 404:
            raise
        return ours  # a server from before device lists
    view = DevicesView.model_validate(response.json())
    if view.version < ours.device_list.version:
        await publish_device_list(api, ours)
        return ours
    if view.version > ours.device_list.version and view.device_list is not None:
        try:
            theirs = SignedDeviceList.decode(view.device_list)
            theirs.verify(secrets.identity.public_key(), username)
        except (DecodeError, BadSignature, LocalProtocolError) as exc:
            logger.warning("the server's device list for this account is refused: %s", exc)
            return ours
        home.save_device_list(theirs)
        if theirs.device_list.find(secrets.device_identity.public_key()) is None:
            logger.warning("this device is no longer in the account's device list")
        return theirs
    return ours


async def approve_link(
    api: ServerApi, home: Home, secrets: AccountSecrets, username: str, code_text: str
) -> Device:
    """On an existing device: add the device whose code the person typed.

    Fetches the request, checks it against the code (so the server cannot swap
    in its own device), signs the next device list with the account key,
    publishes it, and seals the account's keys and the list to the new device.

    Raises:
        LocalProtocolError: the code is not a code.
        CallError: the request does not match the code, is for another account,
            or the device is already linked. Nothing was changed.
        ApiError: the server refused (404: no such request, or it expired).
    """
    code = LinkCode.parse(code_text)
    response = await api.authed_request("GET", f"/link/requests/{code.link_id}")
    view = LinkRequestView.model_validate(response.json())
    if not code.matches(view.request):
        raise CallError(
            "the device waiting under that code is not the one that showed it (the server may"
            " have swapped it, or the code was mistyped): nothing was linked"
        )
    try:
        request = LinkRequest.decode(view.request)
    except DecodeError as exc:
        raise CallError(f"the link request is invalid: {exc}") from None
    if request.username != username:
        raise CallError(f"that device asks to join {request.username!r}, not {username!r}")
    current = ensure_device_list(home, secrets, username).device_list
    new_device = request.device()
    if current.by_id(new_device.device_id) is not None:
        raise CallError("that device is already linked")
    signed = SignedDeviceList.sign(
        current.successor((*current.devices, new_device)), secrets.identity
    )
    await publish_device_list(api, signed)
    home.save_device_list(signed)
    sealed = seal_link_response(
        LinkResponse(secrets.identity, secrets.file_key, secrets.previous_file_keys, signed),
        view.request,
    )
    await api.authed_request(
        "PUT", f"/link/requests/{code.link_id}/response", LinkResponseBody(response=sealed)
    )
    logger.info("linked device %s (%s)", new_device.device_id_text, new_device.name)
    return new_device


@dataclass(frozen=True)
class LinkedAccount:
    """What a new device holds once linked: the account's secrets and its list."""

    secrets: AccountSecrets
    """The account key, file keys and this device's own key."""
    device_list: SignedDeviceList
    """The list that added this device."""


async def link_new_device(
    api: ServerApi,
    username: str,
    device_name: str,
    show_code: Callable[[str], None],
    *,
    poll_interval_s: float = LINK_POLL_INTERVAL_S,
    timeout_s: float = LINK_TIMEOUT_S,
) -> LinkedAccount:
    """On the new device: post a link request, show the code, wait for the sealed answer.

    ``api`` needs no login (any identity will do: only public routes are used).

    Raises:
        CallError: no answer within ``timeout_s``, or it does not open or check out.
        ApiError: the server refused the request.
    """
    new = NewDeviceLink(username, device_name)
    poll_secret = os.urandom(32)
    created = await api.public_request(
        "POST",
        "/link/requests",
        CreateLinkRequest(request=new.request_encoded, poll_hash=sha256(poll_secret)),
    )
    if not created.is_success:
        raise api.error_of(created)
    link = LinkCreated.model_validate(created.json())
    show_code(new.code(link.link_id).text())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        answer = await api.public_request(
            "POST", f"/link/requests/{link.link_id}/poll", LinkPoll(poll_secret=poll_secret)
        )
        if answer.status_code == 200:
            break
        if answer.status_code != 202:
            raise api.error_of(answer)
        if loop.time() >= deadline:
            raise CallError("no device approved the link in time; start again")
        await asyncio.sleep(poll_interval_s)
    sealed = LinkResponseView.model_validate(answer.json()).response
    try:
        response = new.open(sealed)
    except (DecodeError, BadSignature, LocalProtocolError) as exc:
        raise CallError(f"the link answer is not valid: {exc}") from None
    secrets = AccountSecrets(
        response.account_key,
        response.file_key,
        response.previous_file_keys,
        device_key=new.device_key,
    )
    return LinkedAccount(secrets, response.device_list)


async def unlink_device(
    api: ServerApi, home: Home, secrets: AccountSecrets, username: str, device: str
) -> SignedDeviceList:
    """Remove ``device`` (an id in hex, a prefix of one, or a name) from the list.

    The server revokes its tokens at once; it still holds the account key (see
    docs/threat-model.md: after a lost device, recover instead).

    Raises:
        CallError: no such device, several match, or it is the last one.
    """
    current = ensure_device_list(home, secrets, username).device_list
    gone = _find_device(current, device)
    kept = tuple(d for d in current.devices if d.device_id != gone.device_id)
    if not kept:
        raise CallError("cannot unlink the last device of the account")
    signed = SignedDeviceList.sign(current.successor(kept), secrets.identity)
    await publish_device_list(api, signed)
    home.save_device_list(signed)
    return signed


async def rotate_device_key(
    api: ServerApi,
    home: Home,
    secrets: AccountSecrets,
    username: str,
    passphrase: str,
    *,
    kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
) -> AccountSecrets:
    """Give this device a new key: list v+1 with it in place of the old one, then the keystore.

    Contacts follow quietly: the new list is signed by the account key they pinned.
    """
    current = ensure_device_list(home, secrets, username).device_list
    old = current.find(secrets.device_identity.public_key())
    if old is None:
        raise CallError("this device is not in the account's device list")
    new_key = IdentityPrivateKey.generate()
    replaced = tuple(
        Device.of(new_key.public_key(), old.name) if d.device_id == old.device_id else d
        for d in current.devices
    )
    signed = SignedDeviceList.sign(current.successor(replaced), secrets.identity)
    await publish_device_list(api, signed)
    rotated = AccountSecrets(
        secrets.identity,
        secrets.file_key,
        secrets.previous_file_keys,
        secrets.extensions,
        device_key=new_key,
    )
    await asyncio.to_thread(home.save_secrets, rotated, passphrase, kdf_params=kdf_params)
    home.save_device_list(signed)
    return rotated


def _find_device(device_list: DeviceList, wanted: str) -> Device:
    matches = [
        d
        for d in device_list.devices
        if d.name == wanted or (len(wanted) >= 4 and d.device_id_text.startswith(wanted.lower()))
    ]
    if not matches:
        raise CallError(f"no device {wanted!r} in the account's list")
    if len(matches) > 1:
        raise CallError(f"{wanted!r} names several devices; give more of the id")
    return matches[0]


# --- contacts' device lists ---


class PeerDevices:
    """The newest verified device list version of each contact, in ``peer_devices.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path  # the JSON file
        self._lock = FileLock(path.parent / ".lock")  # the home's lock

    def load(self, name: str) -> DevicesSeen | None:
        """What was seen for ``name``, or None."""
        entry = self._read().get(name)
        if not isinstance(entry, dict):
            return None
        try:
            ids = frozenset(bytes.fromhex(text) for text in entry["devices"])
            return DevicesSeen(int(entry["version"]), ids)
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, name: str, seen: DevicesSeen) -> None:
        """Remember ``seen`` for ``name``."""
        with self._lock.held():
            data = self._read()
            data[name] = {
                "version": seen.version,
                "devices": sorted(raw.hex() for raw in seen.device_ids),
            }
            write_atomic(self.path, json.dumps(data, indent=1).encode("utf-8"), "peer devices")

    def _read(self) -> dict[str, object]:
        raw = read_bounded(self.path, "peer devices", MAX_PEER_DEVICES_BYTES)
        if raw is None:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise KeystoreError(f"{self.path} is not JSON") from None
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class PeerDeviceCheck:
    """A contact's devices as verified now."""

    device_list: DeviceList | None
    """Their verified list; None when the account never published one (old accounts)."""
    changed: DevicesChanged | None
    """Devices that came or went since the last look (a quiet notice), or None."""

    def allows(self, signer: IdentityPublicKey, account: IdentityPublicKey) -> bool:
        """Whether ``signer`` may sign for the account: a listed device, or the account key."""
        if signer == account:
            return True
        return self.device_list is not None and self.device_list.find(signer) is not None


NO_DEVICE_LIST = PeerDeviceCheck(None, None)
"""A contact that never published a device list: only its account key signs."""


def check_peer_devices(
    store: PeerDevices, user: UserView, name: str, pinned: IdentityPublicKey
) -> PeerDeviceCheck:
    """Verify ``user``'s device list under the *pinned* account key, refusing rollbacks.

    Raises:
        CallError: the list is not signed by the pinned account key (e.g. the
            server added a device without the owner's signature), is for
            another name, is malformed, or is older than one already seen.
    """
    if user.device_list is None:
        return NO_DEVICE_LIST
    try:
        device_list = SignedDeviceList.decode(user.device_list).verify(pinned, name)
        seen, changed = check_device_list(name, store.load(name), device_list)
    except (DecodeError, BadSignature, LocalProtocolError, RemoteProtocolError) as exc:
        raise CallError(f"{name}'s device list from the server is refused: {exc}") from None
    store.save(name, seen)
    if changed is not None:
        logger.info(
            "%s's devices changed (version %d): %d added, %d removed",
            name,
            changed.version,
            len(changed.added),
            len(changed.removed),
        )
    return PeerDeviceCheck(device_list, changed)


def device_id_text(public: IdentityPublicKey) -> str:
    """The id of the device whose key is ``public``, in hex."""
    return device_id(public).hex()
