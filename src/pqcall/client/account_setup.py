"""Setting up a home for an existing account: as a newly linked device, or by recovery.

:func:`link_home` runs the new device's side of linking
(:func:`pqcall.client.account_devices.link_new_device`) and keeps what it
received in an empty home: the account key and file keys, its own new device
key, the signed device list, and the server's name.

:func:`recover_home` is for when every device is lost: the 24 recovery words
(:mod:`pqcall.crypto.recovery`) sign a *new* account key and its first device
list (``POST /account/recover``). Contacts then see a real key change, with
the loud warning: nobody can tell a recovery from a takeover without comparing
safety numbers. The new list keeps the same recovery key, so the same words
recover again. Files sent to the old account key cannot be read any more.

Both refuse a home that already holds an account, and leave no file behind
when they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from pqcall.client.account_devices import (
    LINK_TIMEOUT_S,
    default_device_name,
    first_device_list,
    link_new_device,
)
from pqcall.client.api import ServerApi
from pqcall.client.home import AccountConfig, Home, key_bundle
from pqcall.client.server_cert import pin_on_first_use
from pqcall.crypto.filekey import FilePrivateKey
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import DEFAULT_KDF_PARAMS, AccountSecrets, KdfParams
from pqcall.crypto.recovery import RECOVER_CONTEXT, recover_signed_data, recovery_key
from pqcall.exceptions import AccountExists
from pqcall.signaling import usernames
from pqcall.signaling.account_messages import RecoverRequest


async def link_home(
    home: Home,
    name: str,
    server_url: str,
    passphrase: str,
    show_code: Callable[[str], None],
    *,
    device_name: str | None = None,
    kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
    timeout_s: float | None = None,
) -> AccountSecrets:
    """Link this (empty) home as a new device of ``name``; ``show_code`` gets the code.

    Raises:
        AccountExists: the home already holds an account.
        CallError: no device approved in time, or the answer did not check out.
        ServerError: the server refused or is unreachable.
    """
    username = usernames.normalize(name)
    if home.has_account():
        raise AccountExists(f"an account already exists in {home.path}")
    verify = await pin_on_first_use(home, server_url)
    async with ServerApi(server_url, username, IdentityPrivateKey.generate(), verify=verify) as api:
        server_name = (await api.health()).server_name
        linked = await link_new_device(
            api,
            username,
            device_name or default_device_name(),
            show_code,
            timeout_s=LINK_TIMEOUT_S if timeout_s is None else timeout_s,
        )
    with _cleanup_on_failure(home):
        await asyncio.to_thread(
            home.create_account, passphrase, kdf_params=kdf_params, secrets=linked.secrets
        )
        home.save_device_list(linked.device_list)
        home.save_config(AccountConfig(username, server_url, server_name, int(time.time())))
    return linked.secrets


async def recover_home(
    home: Home,
    name: str,
    server_url: str,
    words: str,
    passphrase: str,
    *,
    device_name: str | None = None,
    kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
) -> AccountSecrets:
    """Replace ``name``'s account key with a new one, signed by the recovery words.

    Raises:
        InvalidRecoveryWords: the words are not valid (checked before any request).
        AccountExists: the home already holds an account.
        ApiError: 403 when the server refuses (unknown name, no recovery key,
            or words of another account: one answer for all three).
    """
    username = usernames.normalize(name)
    recovery = recovery_key(words)  # bad words fail here, before anything else
    if home.has_account():
        raise AccountExists(f"an account already exists in {home.path}")
    secrets = AccountSecrets(
        IdentityPrivateKey.generate(),
        FilePrivateKey.generate(),
        device_key=IdentityPrivateKey.generate(),
    )
    signed = first_device_list(
        secrets, username, device_name or default_device_name(), recovery.public_key()
    )
    verify = await pin_on_first_use(home, server_url)
    async with ServerApi(server_url, username, secrets.identity, verify=verify) as api:
        server_name = (await api.health()).server_name
        new_identity = secrets.identity.public_key().encode()
        signature = recovery.sign(
            recover_signed_data(server_name, username, new_identity, signed.encode()),
            context=RECOVER_CONTEXT,
        )
        body = RecoverRequest(
            username=username,
            new_identity=new_identity,
            device_list=signed.encode(),
            key_bundle=key_bundle(secrets, username, int(time.time())),
            signature=signature,
        )
        response = await api.public_request("POST", "/account/recover", body)
        if not response.is_success:
            raise api.error_of(response)
    with _cleanup_on_failure(home):
        await asyncio.to_thread(
            home.create_account, passphrase, kdf_params=kdf_params, secrets=secrets
        )
        home.save_device_list(signed)
        home.save_config(AccountConfig(username, server_url, server_name, int(time.time())))
    return secrets


@contextlib.contextmanager
def _cleanup_on_failure(home: Home) -> Iterator[None]:
    created = [
        path
        for path in (home.keystore_path, home.device_list_path, home.config_path)
        if not path.exists()
    ]
    try:
        yield
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
