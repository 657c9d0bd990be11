"""Registering an account: create its keys in the home if needed, register its name.

:func:`register` is what ``pqcall register`` and the UI's first page call;
:class:`~pqcall.client.phone.Phone` then logs in with the account it left.
(:mod:`pqcall.client.phone` re-exports both names.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pqcall.client.api import ServerApi
from pqcall.client.home import AccountConfig, Home
from pqcall.client.http import refuse_plain_http
from pqcall.client.server_cert import pin_on_first_use
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.keystore import DEFAULT_KDF_PARAMS, AccountSecrets, KdfParams
from pqcall.exceptions import CallError
from pqcall.signaling import usernames


@dataclass(frozen=True, slots=True)
class Registration:
    """What :func:`register` left: the account's settings and its unlocked keys."""

    config: AccountConfig
    """Name, server and the server's pinned name, as saved in the home."""
    account: AccountSecrets = field(repr=False)
    """The keys the registration unlocked or created (no second slow unlock to show them)."""


async def register(
    home: Home,
    name: str,
    server_url: str,
    passphrase: str,
    *,
    kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
    insecure: bool = False,
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
    if home.has_account():
        account = await asyncio.to_thread(home.unlock, passphrase)
    else:
        account = await asyncio.to_thread(home.create_account, passphrase, kdf_params=kdf_params)
    bundle = KeyBundle.create(
        account.identity, username, account.file_key.public_key(), int(time.time())
    ).encode()
    pinned = config.server_name if config is not None else None
    verify = await pin_on_first_use(home, server_url)
    async with ServerApi(
        server_url, username, account.identity, server_name=pinned, verify=verify
    ) as api:
        await api.register(bundle)
        server_name = api.server_name
    assert server_name is not None
    config = AccountConfig(
        username=username, server_url=server_url, server_name=server_name, created=int(time.time())
    )
    home.save_config(config)
    return Registration(config, account)
