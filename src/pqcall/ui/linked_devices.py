"""The page's account panel: this account's linked devices, linking, unlinking, rotation.

:func:`add_routes` adds to the token-protected ``/api`` router (decision 1020):

- ``GET /api/account/devices``: the account's device list, brought up to date
  with the server's (:func:`~pqcall.client.account_devices.sync_device_list`):
  ``{"username", "version", "recovery_set", "devices": [{"name", "device_id",
  "short_id", "this_device"}]}``;
- ``POST /api/account/devices/approve {"code"}``: add the device that shows
  ``code`` (:func:`~pqcall.client.account_devices.approve_link`); a code that is
  not one, or does not match the waiting device, is 400; an unknown or expired
  one 404; a device already linked 409;
- ``POST /api/account/devices/unlink {"device"}``: remove a device (its id, a
  prefix of 4+ hex digits, or its name); this device is refused (409: unlink it
  from another device), as is the last one;
- ``POST /api/account/devices/rotate {"passphrase"}``: a new key for this device
  (:func:`~pqcall.client.account_devices.rotate_device_key`); the phone stops
  first and starts again with it (the server revokes the old key's logins);
  409 during a call;
- ``POST /api/account/recovery-words``: the recovery words a registration in
  this page made, handed out once and forgotten (``{"words": null}`` after).

Each answers JSON; errors are ``{"error": "one sentence"}`` with a 4xx status
(502 when the server cannot be reached). The account's operations log in with
a session of their own (this device's key), the same calls ``pqcall devices``,
``link --approve``, ``unlink`` and ``rotate-key`` make. Keys and words are
never logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from pqcall.client.account_devices import (
    approve_link,
    rotate_device_key,
    sync_device_list,
    unlink_device,
)
from pqcall.client.api import ServerApi
from pqcall.client.home import Home
from pqcall.client.phone import Phone
from pqcall.client.server_cert import server_verify
from pqcall.crypto.account import SignedDeviceList
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import (
    ApiError,
    CallError,
    LocalProtocolError,
    ServerError,
    WrongPassphrase,
)
from pqcall.ui.errors import UiError

logger = logging.getLogger(__name__)

SHORT_ID_CHARS = 8
"""Hex digits of a device id the panel shows (``pqcall devices`` shows as many)."""


class AccountHost(Protocol):
    """What the routes need from the controller."""

    home: Home

    @property
    def phone(self) -> Phone | None: ...
    @property
    def account(self) -> AccountSecrets | None: ...
    async def close(self) -> None: ...
    async def start(self) -> None: ...
    async def unlock(self, passphrase: str) -> None: ...
    def notify(self) -> None: ...


class RecoveryWordsOnce:
    """The recovery words of a registration made in this page, until the page takes them."""

    def __init__(self) -> None:
        self._words: str | None = None  # in memory only, never written or logged

    def hold(self, words: str) -> None:
        """Keep ``words`` for the page."""
        self._words = words

    def take(self) -> str | None:
        """The words, once; None afterwards (or when there were none)."""
        words, self._words = self._words, None
        return words


class CodeBody(BaseModel):
    """``POST /api/account/devices/approve``."""

    model_config = ConfigDict(extra="ignore")
    code: str = Field(max_length=256)


class DeviceBody(BaseModel):
    """``POST /api/account/devices/unlink``."""

    model_config = ConfigDict(extra="ignore")
    device: str = Field(min_length=1, max_length=128)


class PassphraseBody(BaseModel):
    """``POST /api/account/devices/rotate``."""

    model_config = ConfigDict(extra="ignore")
    passphrase: str = Field(max_length=1024)


def devices_view(signed: SignedDeviceList, account: AccountSecrets) -> dict[str, Any]:
    """The panel's JSON for ``signed`` (this device marked)."""
    ours = account.device_identity.public_key()
    listed = signed.device_list
    return {
        "username": listed.username,
        "version": listed.version,
        "recovery_set": listed.recovery is not None,
        "devices": [
            {
                "name": device.name,
                "device_id": device.device_id_text,
                "short_id": device.device_id_text[:SHORT_ID_CHARS],
                "this_device": device.public == ours,
            }
            for device in listed.devices
        ],
    }


def add_routes(api: APIRouter, host: AccountHost, words: RecoveryWordsOnce) -> None:
    """Add the account panel's routes to ``api`` (token-protected ``/api``)."""

    def unlocked() -> tuple[AccountSecrets, str]:
        account = host.account
        config = host.home.load_config()
        if account is None or config is None:
            raise UiError(409, "unlock the account first")
        return account, config.username

    def session(account: AccountSecrets) -> ServerApi:
        config = host.home.load_config()
        assert config is not None  # unlocked() checked it
        return ServerApi(
            config.server_url,
            config.username,
            account.identity,
            server_name=config.server_name,
            verify=server_verify(host.home),
            device_key=account.device_key,
        )

    @api.get("/account/devices")
    async def list_devices() -> dict[str, Any]:
        account, username = unlocked()
        async with _Refusals("the device list"), session(account) as server:
            signed = await sync_device_list(server, host.home, account, username)
        return devices_view(signed, account)

    @api.post("/account/devices/approve")
    async def approve(body: CodeBody) -> dict[str, Any]:
        account, username = unlocked()
        if not body.code.strip():
            raise UiError(400, "type the code the new device shows")
        async with _Refusals("the link"), session(account) as server:
            device = await approve_link(server, host.home, account, username, body.code.strip())
            signed = await sync_device_list(server, host.home, account, username)
        host.notify()
        view = devices_view(signed, account)
        view["linked"] = {"name": device.name, "short_id": device.device_id_text[:SHORT_ID_CHARS]}
        return view

    @api.post("/account/devices/unlink")
    async def unlink(body: DeviceBody) -> dict[str, Any]:
        account, username = unlocked()
        async with _Refusals("the unlink"), session(account) as server:
            current = await sync_device_list(server, host.home, account, username)
            ours = current.device_list.find(account.device_identity.public_key())
            wanted = body.device.strip().lower()
            if ours is not None and (
                body.device.strip() == ours.name
                or (len(wanted) >= 4 and ours.device_id_text.startswith(wanted))
            ):
                raise UiError(
                    409, "this is the device you are using: unlink it from another device"
                )
            signed = await unlink_device(server, host.home, account, username, body.device.strip())
        host.notify()
        return devices_view(signed, account)

    @api.post("/account/devices/rotate")
    async def rotate(body: PassphraseBody) -> dict[str, Any]:
        account, username = unlocked()
        try:  # the keystore is saved again under it: check it first
            await asyncio.to_thread(host.home.unlock, body.passphrase)
        except WrongPassphrase:
            raise UiError(401, "wrong passphrase") from None
        phone = host.phone
        if phone is not None and phone.current_call is not None:
            raise UiError(409, "hang up first: the phone restarts with the new key")
        # the server revokes the old key's logins: the phone stops first (so it does not
        # try them again and again, which counts as failed logins) and starts with the new key
        await host.close()
        try:
            async with _Refusals("the key rotation"), session(account) as server:
                rotated = await rotate_device_key(
                    server, host.home, account, username, body.passphrase
                )
        finally:
            await host.start()
            await host.unlock(body.passphrase)  # the old key again if the rotation failed
        assert rotated.device_key is not None
        signed = host.home.load_device_list(rotated.identity.public_key(), username)
        assert signed is not None  # rotate_device_key saved it
        view = devices_view(signed, rotated)
        view["fingerprint"] = rotated.device_key.public_key().fingerprint_text()
        return view

    @api.post("/account/recovery-words")
    async def recovery_words() -> dict[str, Any]:
        return {"words": words.take()}


class _Refusals:
    """Turn the client's refusals into :class:`UiError` (4xx with the reason, 502 unreachable)."""

    def __init__(self, what: str) -> None:
        self.what = what

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, UiError):
            return False
        if isinstance(exc, ApiError):
            status = exc.status if 400 <= exc.status < 500 else 502
            if exc.status == 404 and self.what == "the link":
                raise UiError(404, f"no device waits under that code (wrong or expired): {exc}")
            raise UiError(status, f"the server refused {self.what}: {exc}") from None
        if isinstance(exc, CallError):
            message = str(exc)
            status = 404 if message.startswith("no device") else 400
            if "already" in message or "last device" in message:
                status = 409
            raise UiError(status, message) from None
        if isinstance(exc, LocalProtocolError):
            raise UiError(400, f"that is not a link code: {exc}") from None
        if isinstance(exc, ServerError):
            raise UiError(502, str(exc)) from None
        return False


__all__ = ["RecoveryWordsOnce", "add_routes", "devices_view"]
