"""HTTP bodies of accounts with several devices (issue 22), shared by server and client.

The conventions of :mod:`pqcall.signaling.messages` (strict, closed, bounded
models; bytes as base64url) hold here too. Routes (``docs/server.md``):

- ``PUT /account/devices`` (:class:`PutDeviceListRequest` -> :class:`DevicesView`)
  and ``GET /account/devices``: the caller's signed device list;
- the link rendezvous, where a new device and an existing one swap two opaque
  blobs the server never reads: ``POST /link/requests``
  (:class:`CreateLinkRequest` -> :class:`LinkCreated`), ``GET
  /link/requests/{link_id}`` (-> :class:`LinkRequestView`), ``PUT
  /link/requests/{link_id}/response`` (:class:`LinkResponseBody`), ``POST
  /link/requests/{link_id}/poll`` (:class:`LinkPoll` -> :class:`LinkResponseView`);
- ``POST /account/recover`` (:class:`RecoverRequest` -> ``UserView``).

Sizes: every body must fit the server's 64 KiB request limit in base64, so a
device list is at most :data:`MAX_DEVICE_LIST_BYTES` (16 devices fit) and a link
response :data:`MAX_LINK_RESPONSE_BYTES`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pqcall.signaling.messages import (
    MAX_SIGNED_DEVICE_LIST_BYTES,
    Base64Url,
    Identity,
    KeyBundleBytes,
    Message,
    Signature,
    Timestamp,
    Username,
)

MAX_DEVICE_LIST_BYTES = (
    MAX_SIGNED_DEVICE_LIST_BYTES  # 16 devices of 2,070 bytes, a recovery key, a signature
)
MAX_LINK_REQUEST_BYTES = 16 * 1024
MAX_LINK_RESPONSE_BYTES = 45 * 1024  # 60 KiB in base64: fits the 64 KiB body limit
POLL_SECRET_LENGTH = 32
DEVICE_ID_PATTERN = r"^[0-9a-f]{32}$"
LINK_ID_PATTERN = r"^[a-z2-7]{16}$"  # 80 random bits, lowercase base32

DeviceListBytes = Annotated[bytes, Base64Url(MAX_DEVICE_LIST_BYTES, 1)]
DeviceIdText = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, description="32 hex digits")]
LinkId = Annotated[str, Field(pattern=LINK_ID_PATTERN, description="16 base32 letters")]
PollSecret = Annotated[bytes, Base64Url(POLL_SECRET_LENGTH, POLL_SECRET_LENGTH)]


class PutDeviceListRequest(Message):
    """``PUT /account/devices``: a newer device list, signed by the account key."""

    device_list: DeviceListBytes = Field(description="an encoded SignedDeviceList")


class DeviceView(Message):
    """One device of the caller's list, as the server stores it."""

    device_id: DeviceIdText
    name: str = Field(max_length=64)
    added: Timestamp


class DevicesView(Message):
    """``GET``/``PUT /account/devices``: the caller's stored list and its devices."""

    version: int = Field(ge=0, description="0: the account never sent a list")
    device_list: DeviceListBytes | None = Field(description="the stored SignedDeviceList")
    devices: list[DeviceView] = Field(max_length=16)


class CreateLinkRequest(Message):
    """``POST /link/requests`` (no login): a new device asks to be linked."""

    request: Annotated[bytes, Base64Url(MAX_LINK_REQUEST_BYTES, 1)]
    poll_hash: Annotated[bytes, Base64Url(32, 32)] = Field(
        description="SHA-256 of the secret the new device will poll with"
    )
    username: Username | None = Field(
        default=None, description="the account it asks to join: only it may read or answer it"
    )


class LinkCreated(Message):
    """Where the new device's request waits, and until when."""

    link_id: LinkId
    expires: Timestamp


class LinkRequestView(Message):
    """``GET /link/requests/{link_id}`` (logged in): the new device's request."""

    request: Annotated[bytes, Base64Url(MAX_LINK_REQUEST_BYTES, 1)]
    expires: Timestamp


class LinkResponseBody(Message):
    """``PUT /link/requests/{link_id}/response`` (logged in, once): the existing device's answer."""

    response: Annotated[bytes, Base64Url(MAX_LINK_RESPONSE_BYTES, 1)]


class LinkPoll(Message):
    """``POST /link/requests/{link_id}/poll`` (no login): the new device asks for the answer."""

    poll_secret: PollSecret


class LinkResponseView(Message):
    """The answer, handed over once; the rendezvous is then deleted."""

    response: Annotated[bytes, Base64Url(MAX_LINK_RESPONSE_BYTES, 1)]


class RecoverRequest(Message):
    """``POST /account/recover`` (no login): replace an account's keys with the recovery key.

    ``signature`` is the recovery key's (context ``pqcall.crypto.recovery.RECOVER_CONTEXT``)
    over ``recover_signed_data(server name, username, new_identity, device_list)``;
    ``device_list`` must be signed by ``new_identity`` and ``key_bundle`` verify under it.
    """

    username: Username
    new_identity: Identity
    device_list: DeviceListBytes
    key_bundle: KeyBundleBytes
    signature: Signature
