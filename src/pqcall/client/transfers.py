"""An account's file transfers with a connection of their own, for one-shot callers.

:func:`open_transfers` unlocks the account, logs in over HTTP only (no push
connection, so it never takes the events of a running softphone) and yields its
:class:`~pqcall.client.files.FileTransfers`; leaving the block closes the
connection. Used by ``pqcall send-file``, ``inbox`` and ``receive`` and by
``pqcall bench files``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pqcall.client.api import ServerApi
from pqcall.client.files import FileTransfers
from pqcall.client.home import AccountConfig, Home
from pqcall.client.server_cert import server_verify

__all__ = ["open_transfers"]


@contextlib.asynccontextmanager
async def open_transfers(
    home: Home, secret: str, config: AccountConfig
) -> AsyncIterator[FileTransfers]:
    """The account's :class:`~pqcall.client.files.FileTransfers`, with its own server connection.

    Args:
        home: the account's home.
        secret: its passphrase (the keystore is unlocked in a worker thread).
        config: its registration (server, username), from :meth:`Home.load_config`.
    """
    account = await asyncio.to_thread(home.unlock, secret)
    async with ServerApi(
        config.server_url,
        config.username,
        account.identity,
        server_name=config.server_name,
        verify=server_verify(home),
        device_key=account.device_key,
    ) as api:
        yield FileTransfers(home, api, account, home.contacts())
