"""Logins by device key against a real server, and the account key as the fallback."""

from __future__ import annotations

import pytest

from pqcall.client.account_devices import first_device_list, publish_device_list
from pqcall.client.api import ServerApi
from pqcall.client.home import key_bundle
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import ApiError
from tests.harness import run_async
from tests.server.conftest import RunningServer


@run_async
async def test_device_key_login_and_the_account_key_fallback(server: RunningServer) -> None:
    bob = AccountSecrets.generate()
    assert bob.device_key is not None
    async with ServerApi(server.base_url, "bob", bob.identity) as api:
        await api.register(key_bundle(bob, "bob", 1_700_000_000))
    # the list is not on the server yet: the device key is refused, the account key
    # (the account's only device so far) logs in instead
    async with ServerApi(server.base_url, "bob", bob.identity, device_key=bob.device_key) as api:
        await api.login()
        await publish_device_list(api, first_device_list(bob, "bob", "laptop"))
    # now the device key is the device, and the account key is no longer one
    async with ServerApi(server.base_url, "bob", bob.identity, device_key=bob.device_key) as api:
        await api.login()
    with pytest.raises(ApiError, match="does not verify"):
        async with ServerApi(server.base_url, "bob", bob.identity) as api:
            await api.login()
    # a key that is neither gets the server's refusal, not the fallback's
    stranger = IdentityPrivateKey.generate()
    with pytest.raises(ApiError, match="does not verify"):
        async with ServerApi(server.base_url, "bob", stranger, device_key=stranger) as api:
            await api.login()
