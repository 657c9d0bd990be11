"""Registering an account: create its keys in the home if needed, register its name.

:func:`register` is what ``pqcall register`` and the UI's first page call;
:class:`~pqcall.client.phone.Phone` then logs in with the account it left.
(:mod:`pqcall.client.phone` re-exports both names.) A new account gets an
account key, a device key and a file key, and recovery words
(:mod:`pqcall.crypto.recovery`): returned once in :attr:`Registration.recovery_words`
for the caller to show, never stored. Its first device list (this device and
the recovery key's public half, signed by the account key) is kept in the home
and published (``PUT /account/devices``). A registration that fails
leaves no file behind that it created (no stray ``account.key``);
:func:`check_server` lets a caller find an unreachable server before it asks
for a passphrase.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from pqcall.client.account_devices import (
    default_device_name,
    first_device_list,
    publish_device_list,
)
from pqcall.client.api import ServerApi
from pqcall.client.home import AccountConfig, Home
from pqcall.client.http import HttpSession, refuse_plain_http
from pqcall.client.privatefile import LOCK_NAME
from pqcall.client.server_cert import pin_on_first_use, pin_path, server_verify
from pqcall.crypto.account import SignedDeviceList
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.keystore import DEFAULT_KDF_PARAMS, AccountSecrets, KdfParams
from pqcall.crypto.recovery import new_recovery_words, recovery_key
from pqcall.exceptions import ApiError, CallError, ServerUnreachable
from pqcall.signaling import usernames

SERVER_START_WAIT_S = 15.0
"""How long :func:`check_server` waits for a server that refuses connections (just started)."""
SERVER_RETRY_INTERVAL_S = 0.25


@dataclass(frozen=True, slots=True)
class Registration:
    """What :func:`register` left: the account's settings and its unlocked keys."""

    config: AccountConfig
    """Name, server and the server's pinned name, as saved in the home."""
    account: AccountSecrets = field(repr=False)
    """The keys the registration unlocked or created (no second slow unlock to show them)."""
    recovery_words: str | None = field(default=None, repr=False)
    """A new account's 24 recovery words: show them once, never store them; None if not new."""


async def register(
    home: Home,
    name: str,
    server_url: str,
    passphrase: str,
    *,
    kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
    insecure: bool = False,
    device_name: str | None = None,
) -> Registration:
    """Create the account in ``home`` if it has none, and register it as ``name``.

    Registering again with the same name and server is harmless (the server
    answers with the stored entry when the identity matches). Plain
    ``http://`` beyond private networks is refused first unless ``insecure``;
    a self-signed ``https://`` server's certificate is pinned in the home
    (:mod:`pqcall.client.server_cert`).

    Raises:
        CallError: ``home`` is already registered under another name or server.
        ServerError: plain HTTP to a public address, the server refused (name
            taken, bad request) or is unreachable.
        WrongPassphrase: the existing keystore does not open with ``passphrase``.
    """
    refuse_plain_http(server_url, insecure=insecure)  # before any file or connection
    username = usernames.normalize(name)
    config = home.load_config()
    if config is not None and (config.username, config.server_url) != (username, server_url):
        raise CallError(
            f"{home.path} is already registered as {config.username} at {config.server_url};"
            " use another --home for another account"
        )
    ours = (
        home.path,
        home.keystore_path,
        home.path / LOCK_NAME,
        pin_path(home),
        home.device_list_path,
    )
    created = [path for path in ours if not path.exists()]
    name = device_name or default_device_name()
    try:
        return await _register(home, username, server_url, passphrase, config, kdf_params, name)
    except BaseException:
        _remove_created(created)
        raise


async def check_server(home: Home, server_url: str, *, wait_s: float | None = None) -> None:
    """``GET /health`` on ``server_url``; a refused connection is retried for ``wait_s``.

    Pins nothing and writes nothing (a self-signed server's certificate is not
    checked here, only whether something answers).

    Raises:
        ServerUnreachable: still no answer after ``wait_s`` (default
            :data:`SERVER_START_WAIT_S`).
    """
    if wait_s is None:
        wait_s = SERVER_START_WAIT_S
    verify = server_verify(home)
    if server_url.lower().startswith("https://") and verify is True:
        verify = False  # only "does it answer": register pins or checks the certificate
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    session = HttpSession(server_url, verify=verify)
    try:
        while True:
            try:
                await session.send("GET", "/health", token=None)
                return
            except ServerUnreachable:
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(SERVER_RETRY_INTERVAL_S)
    finally:
        await session.close()


def _remove_created(paths: list[Path]) -> None:
    """Remove what a failed registration created: files first, then the home if left empty."""
    for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


async def _register(
    home: Home,
    username: str,
    server_url: str,
    passphrase: str,
    config: AccountConfig | None,
    kdf_params: KdfParams,
    device_name: str,
) -> Registration:
    if home.has_account():
        account = await asyncio.to_thread(home.unlock, passphrase)
    else:
        account = await asyncio.to_thread(home.create_account, passphrase, kdf_params=kdf_params)
    words: str | None = None
    stored = home.load_device_list(account.identity.public_key(), username)
    if stored is None:  # a first registration, or a home from before device lists
        words = new_recovery_words()
        recovery = recovery_key(words).public_key()
        stored = first_device_list(account, username, device_name, recovery)
        home.save_device_list(stored)
    signed = stored
    # until its list is on the server, an account logs in with its account key
    device_key = account.device_key if config is not None and words is None else None
    bundle = KeyBundle.create(
        account.identity, username, account.file_key.public_key(), int(time.time())
    ).encode()
    pinned = config.server_name if config is not None else None
    verify = await pin_on_first_use(home, server_url)
    async with ServerApi(
        server_url,
        username,
        account.identity,
        server_name=pinned,
        verify=verify,
        device_key=device_key,
    ) as api:
        await api.register(bundle)
        server_name = api.server_name
        await _publish_first_list(api, signed)
    assert server_name is not None
    config = AccountConfig(
        username=username, server_url=server_url, server_name=server_name, created=int(time.time())
    )
    home.save_config(config)
    return Registration(config, account, words)


async def _publish_first_list(api: ServerApi, signed: SignedDeviceList) -> None:
    """Publish the home's list; one the server already holds (409) is fine.

    A server without device lists (404: older than linked devices) is told at
    the next login that publishes (:func:`~pqcall.client.account_devices.sync_device_list`).
    """
    try:
        await publish_device_list(api, signed)
    except ApiError as exc:
        if exc.status not in (404, 409):
            raise
