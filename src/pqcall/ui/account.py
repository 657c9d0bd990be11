"""The UI's account: unlock it, or create and register it, then start its phone.

Functions without state; the :class:`~pqcall.ui.controller.Controller` runs
one at a time and keeps the phone they start. Refusals are
:class:`~pqcall.ui.errors.UiError` (an HTTP-like status and one sentence).
The passphrase is never stored or logged: it unlocks the keystore and is
dropped. With no server URL given, the one pqcall server on the LAN is looked
for with mDNS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, register
from pqcall.crypto.keystore import AccountSecrets, KdfParams
from pqcall.exceptions import ApiError, CallError, ServerError, WrongPassphrase
from pqcall.signaling import usernames
from pqcall.ui.errors import UiError

FindServers = Callable[[], Any]
"""Looks for servers on the LAN: an awaitable of entries with ``name`` and ``url``."""


async def unlock_account(home: Home, passphrase: str) -> AccountSecrets:
    """Open the keystore of the account in ``home``.

    Raises:
        UiError: 401 wrong passphrase, 409 no account yet.
    """
    config = home.load_config()
    if config is None:
        raise UiError(409, "there is no account here yet: register first")
    try:
        return await asyncio.to_thread(home.unlock, passphrase)
    except WrongPassphrase:
        raise UiError(401, "wrong passphrase") from None


async def register_account(
    home: Home,
    name: str,
    server_url: str,
    passphrase: str,
    *,
    kdf_params: KdfParams,
    find_servers: FindServers | None,
    on_recovery_words: Callable[[str], None] | None = None,
) -> AccountSecrets:
    """Create the identity if there is none, register ``name``, open the keystore.

    ``server_url`` "" looks for the one server on the LAN (``find_servers``,
    None: the real mDNS browser). A new account's recovery words go to
    ``on_recovery_words`` (to be shown once; never stored).

    Raises:
        UiError: 400 bad name or URL, 401 wrong passphrase (existing identity),
            409 name taken or another account here, 502 server unreachable.
    """
    if not passphrase:
        raise UiError(400, "the passphrase must not be empty")
    try:
        username = usernames.normalize(name)
    except usernames.InvalidUsername as exc:
        raise UiError(400, str(exc)) from None
    url = parse_server_url(server_url) if server_url.strip() else await discover(find_servers)
    try:
        registration = await register(home, username, url, passphrase, kdf_params=kdf_params)
        words = getattr(registration, "recovery_words", None)  # a new account's (issue 22)
        if words is not None and on_recovery_words is not None:
            on_recovery_words(words)
        return await asyncio.to_thread(home.unlock, passphrase)
    except WrongPassphrase:
        raise UiError(401, "wrong passphrase") from None
    except CallError as exc:
        raise UiError(409, str(exc)) from None
    except ApiError as exc:
        if exc.status == 409:
            raise UiError(409, f"the name {username} is taken: {exc}") from None
        raise UiError(400 if exc.status < 500 else 502, str(exc)) from None
    except ServerError as exc:
        raise UiError(502, str(exc)) from None


async def start_phone(home: Home, account: AccountSecrets, media: MediaOptions) -> Phone:
    """A started phone for the unlocked ``account`` (logged in, push connection opening).

    Raises:
        UiError: 502 server unreachable (the phone is closed again).
    """
    phone = Phone(home, account=account, media=media)
    try:
        await phone.start()
    except ServerError as exc:
        await phone.close()
        raise UiError(502, str(exc)) from None
    return phone


async def discover(finder: FindServers | None) -> str:
    """The URL of the one pqcall server on the LAN (``finder`` None: the real mDNS browser).

    Raises:
        UiError: 502 none found or mDNS unavailable, 409 several found.
    """
    if finder is not None:
        found = await finder()
    else:
        from pqcall.client.discovery import DiscoveryUnavailable, find_servers

        try:
            found = await find_servers()
        except DiscoveryUnavailable as exc:
            raise UiError(502, f"cannot look for a server on the LAN ({exc})") from None
    if not found:
        raise UiError(502, "no pqcall server found on the LAN; enter its address")
    if len(found) > 1:
        names = ", ".join(f"{server.name} ({server.url})" for server in found)
        raise UiError(409, f"several servers found on the LAN: {names}; enter one")
    return str(found[0].url)


def parse_server_url(text: str) -> str:
    """A server URL as typed: ``http://`` added when no scheme is, no trailing ``/``.

    Raises:
        UiError: 400 not an http or https URL.
    """
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https") or url.endswith("://"):
        raise UiError(400, f"{text!r} is not a server address: expected http://HOST:PORT")
    return url.rstrip("/")


__all__ = [
    "discover",
    "parse_server_url",
    "register_account",
    "start_phone",
    "unlock_account",
]
