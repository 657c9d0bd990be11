"""Encrypted file transfer for one account: send a file, list waiting files, receive one.

:class:`FileTransfers` is the one object phone, CLI, UI and benchmarks hold;
it wraps :mod:`pqcall.crypto.filecrypt` (the format) with the server's file
routes (``docs/server.md``) and the home directory::

    sender                                  server                     recipient
      new file key -> outgoing/<key>.json
      POST /files, PUT .../content     ->   stored                ->  push event file.waiting
        (encrypted while sent)              GET /files            <-  inbox
                                            GET .../content       ->  decrypted while received
                                                                      into OUT/.<id>.part,
                                                                      verify, rename
                                            DELETE /files/<id>    <-

The work is done in :mod:`pqcall.client.upload` (encrypt while uploading,
resume; the stream in :mod:`pqcall.client.upload_stream`),
:mod:`pqcall.client.download` (inbox, decrypt while downloading, verify, save
atomically; the partial file in :mod:`pqcall.client.download_stream`) and
:mod:`pqcall.client.file_names` (what a received file is saved as). No
ciphertext is written to disk on either side. Each states its own contract;
memory use is bounded in all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from pqcall.client.api import ServerApi
from pqcall.client.contacts import Contacts
from pqcall.client.download import FileReceiver, ReceivedFile, WaitingFile
from pqcall.client.file_stream import Progress
from pqcall.client.home import Home
from pqcall.client.upload import FileSender, SentFile
from pqcall.crypto.keystore import AccountSecrets

__all__ = ["FileTransfers", "Progress", "ReceivedFile", "SentFile", "WaitingFile"]


class FileTransfers:
    """Send and receive encrypted files as the account in ``home``.

    Args:
        home: the account's home (pending transfers live under it).
        api: the account's server connection.
        account: the unlocked keys (signs what we send, opens what we receive).
        contacts: the pins every sender and recipient is checked against.
        clock: unix time, for the timestamp inside sent files.
    """

    def __init__(
        self,
        home: Home,
        api: ServerApi,
        account: AccountSecrets,
        contacts: Contacts,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home  # the account's directory
        self._contacts = contacts  # the pins, shared by sender and receiver
        self._sender = FileSender(home, api, account, contacts, clock=clock)  # uploads
        self._receiver = FileReceiver(home, api, account, contacts)  # inbox and downloads

    @property
    def outgoing_dir(self) -> Path:
        """States of uploads not yet complete."""
        return self._sender.outgoing_dir

    @property
    def incoming_dir(self) -> Path:
        """States of downloads not yet complete."""
        return self._receiver.incoming_dir

    async def send(
        self, name: str, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> SentFile:
        """Encrypt ``path`` to ``name``, sign it, and upload it; resume a pending upload of it.

        Raises:
            KeyChangedError: ``name``'s identity is not the pinned one (nothing sent).
            UnknownUser: no such user.
            TransferError: ``path`` is not a readable file.
            ApiError: the server refused (413: too large or over quota).
            ServerUnreachable: the server cannot be reached (rerun to resume).
        """
        return await self._sender.send(name, path, progress=progress)

    async def inbox(self) -> list[WaitingFile]:
        """Complete files waiting for us, oldest first, with what we know of each sender."""
        return await self._receiver.inbox()

    async def receive(
        self,
        file_id: str,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        progress: Progress | None = None,
    ) -> ReceivedFile:
        """Download file ``file_id``, check it, save it in ``out_dir``, delete it on the server.

        Args:
            file_id: from the inbox or a ``file.waiting`` event.
            out_dir: where to save it (created if missing); the home's
                ``received/`` folder when None.
            progress: told how the download and decryption go.

        Raises:
            KeyChangedError: the sender's identity is not the one pinned.
            FileCryptoError: the file is tampered with, truncated, not signed by
                the sender, or not for us (nothing saved; the server keeps it).
            TransferError: not a file for us, still uploading, or the server's
                copy is shorter than the size it announced (nothing saved).
            ServerUnreachable: the download broke off (run it again to resume).
            ApiError: no such file (404).
        """
        return await self._receiver.receive(file_id, out_dir, progress=progress)
