"""Files the UI sends and receives: each transfer's progress, the inbox, downloads handed out once.

A send runs in the background (:meth:`Transfers.send_file` returns at once);
a receive runs while the request waits. A file is saved only once its
sender's signature checked (else the receive fails with 422), so a received
transfer says who signed it and where it was saved. Progress comes from worker threads
(encrypting, decrypting) and reaches subscribers through
:meth:`~pqcall.ui.hub.Hub.notify_threadsafe`. A received file is saved in the
home's ``received/`` and handed to the browser once (:meth:`Transfers.take_download`).
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqcall.client.home import Home
from pqcall.client.phone import Phone
from pqcall.exceptions import (
    ApiError,
    FileCryptoError,
    KeyChangedError,
    KeystoreError,
    PqcallError,
    ServerError,
    TransferError,
)
from pqcall.signaling import usernames
from pqcall.signaling.messages import FileView
from pqcall.ui.errors import UiError
from pqcall.ui.hub import Hub

logger = logging.getLogger(__name__)

UPLOADS_NAME = "ui-uploads"
"""Folder in the home where browser uploads wait (plaintext) until they are encrypted."""


@dataclass(slots=True)
class Transfer:
    """A file being sent or received, as the page shows its progress."""

    id: str
    """Ours (a send has no server file id until it is created)."""
    direction: str
    """``send`` or ``receive``."""
    name: str
    """The file name (sent) or the file id (received, until the name is known)."""
    done: int = 0
    """Bytes of the current phase done."""
    total: int = 0
    """Bytes of the current phase."""
    state: str = "starting"
    """``encrypting``, ``uploading``, ``downloading``, ``decrypting``, ``done`` or ``failed``."""
    error: str | None = None
    """Why it failed."""
    file_id: str | None = None
    """The server's id of the file, once known."""
    saved_path: str | None = None
    """Where a received file was saved (after its signature checked)."""
    signed_by: str | None = None
    """Whose signature a received file carries (checked against their saved key)."""
    signer_verified: bool | None = None
    """Whether the user verified the signer's safety number."""

    def to_json(self) -> dict[str, Any]:
        """The entry of ``State.transfers``."""
        return {
            "id": self.id,
            "direction": self.direction,
            "name": self.name,
            "done": self.done,
            "total": self.total,
            "state": self.state,
            "error": self.error,
            "file_id": self.file_id,
            "saved_path": self.saved_path,
            "signed_by": self.signed_by,
            "signer_verified": self.signer_verified,
        }


class Transfers:
    """The account's file transfers, inbox and received files.

    Args:
        hub: the phone, notifications and background work.
        home: the account's home (uploads wait in it).
        key_changed: called when a peer's key changed (the warnings then show it).
    """

    def __init__(self, hub: Hub, home: Home, key_changed: Callable[[Phone], None]) -> None:
        self._hub = hub  # the phone, notify, spawn
        self._home = home  # uploads wait here
        self._key_changed = key_changed  # drains the phone's security warnings
        self.inbox: list[FileView] = []  # files waiting for us
        self._transfers: dict[str, Transfer] = {}  # by our id, oldest first
        self._downloads: dict[str, tuple[Path, str]] = {}  # received, not yet downloaded

    def entries(self) -> list[Transfer]:
        """Every transfer of this session, oldest first."""
        return list(self._transfers.values())

    async def send_file(self, to: str, path: Path, *, cleanup: Path | None = None) -> str:
        """Start sending ``path`` to ``to`` in the background; returns the transfer's id.

        Progress and the outcome show in ``State.transfers``. ``cleanup`` (a
        folder holding ``path``) is removed when the transfer ends.

        Raises:
            UiError: 400 bad name, 409 locked.
        """
        phone = self._hub.require_phone()
        try:
            recipient = usernames.normalize(to)
        except usernames.InvalidUsername as exc:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
            raise UiError(400, str(exc)) from None
        transfer = Transfer(id=secrets.token_hex(8), direction="send", name=path.name)
        self._transfers[transfer.id] = transfer
        self._hub.spawn(self._send(phone, transfer, recipient, path, cleanup), "ui send file")
        self._hub.notify()
        return transfer.id

    def uploads_dir(self) -> Path:
        """A new private folder in the home for one upload from the browser."""
        from pqcall.client.privatefile import make_private_dir

        make_private_dir(self._home.path)
        base = make_private_dir(self._home.path / UPLOADS_NAME)
        folder = base / secrets.token_hex(8)
        folder.mkdir(mode=0o700)
        return folder

    async def receive_file(self, file_id: str) -> dict[str, Any]:
        """Download, check and save file ``file_id`` in the home's ``received/``.

        Returns ``{"file_id", "name", "size", "download", "saved_path",
        "signed_by", "signer_verified"}``; the saved file can then be fetched
        once (:meth:`take_download`).

        Raises:
            UiError: 409 sender's key changed (``key_changed``), 422 the file fails
                its checks, 404 no such file, 502 server.
        """
        phone = self._hub.require_phone()
        transfer = Transfer(id=secrets.token_hex(8), direction="receive", name=file_id)
        transfer.file_id = file_id
        self._transfers[transfer.id] = transfer
        self._hub.notify()
        try:
            received = await phone.files().receive(file_id, progress=self._progress(transfer))
        except KeyChangedError as exc:
            self._key_changed(phone)
            self._fail(transfer, exc)
            raise UiError(409, str(exc), key_changed=True) from None
        except FileCryptoError as exc:
            self._fail(transfer, exc)
            raise UiError(422, str(exc)) from None
        except (TransferError, ApiError) as exc:
            self._fail(transfer, exc)
            raise UiError(404 if "no file" in str(exc) else 409, str(exc)) from None
        except (ServerError, KeystoreError) as exc:
            self._fail(transfer, exc)
            raise UiError(502, str(exc)) from None
        transfer.name = received.path.name
        transfer.state = "done"
        transfer.saved_path = str(received.path)
        transfer.signed_by = received.sender
        transfer.signer_verified = received.sender_verified
        self._downloads[file_id] = (received.path, received.path.name)
        self.inbox = [view for view in self.inbox if view.file_id != file_id]
        self._hub.spawn(self.refresh_inbox(), "ui inbox")
        self._hub.notify()
        return {
            "file_id": file_id,
            "name": received.path.name,
            "size": received.size,
            "download": f"/api/files/{file_id}/download",
            "saved_path": transfer.saved_path,
            "signed_by": transfer.signed_by,
            "signer_verified": transfer.signer_verified,
        }

    def take_download(self, file_id: str) -> tuple[Path, str]:
        """The saved file ``file_id`` and its name, handed out once.

        Raises:
            UiError: 404 not received here, or already downloaded.
        """
        found = self._downloads.pop(file_id, None)
        if found is None or not found[0].is_file():
            raise UiError(404, f"no received file {file_id} to download")
        return found

    def file_waiting(self, view: FileView) -> None:
        """The server pushed that a file waits for us."""
        if all(known.file_id != view.file_id for known in self.inbox):
            self.inbox.append(view)
        self._hub.notify()

    async def refresh_inbox(self) -> None:
        """Ask the server which files wait for us (failures are logged and ignored)."""
        phone = self._hub.phone
        if phone is None:
            return
        try:
            waiting = await phone.files().inbox()
        except PqcallError as exc:
            logger.info("inbox: %s", exc)
            return
        self.inbox = [entry.view for entry in waiting]
        self._hub.notify()

    async def _send(
        self, phone: Phone, transfer: Transfer, to: str, path: Path, cleanup: Path | None
    ) -> None:
        try:
            sent = await phone.files().send(to, path, progress=self._progress(transfer))
            transfer.file_id = sent.file_id
            transfer.state = "done"
        except KeyChangedError as exc:
            self._key_changed(phone)
            transfer.state, transfer.error = "failed", str(exc)
        except PqcallError as exc:
            transfer.state, transfer.error = "failed", str(exc)
        finally:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
            self._hub.notify()

    def _progress(self, transfer: Transfer) -> Callable[[str, int, int], None]:
        def report(phase: str, done: int, total: int) -> None:
            # from a worker thread while encrypting or decrypting
            transfer.state, transfer.done, transfer.total = phase, done, total
            self._hub.notify_threadsafe()

        return report

    def _fail(self, transfer: Transfer, exc: Exception) -> None:
        transfer.state, transfer.error = "failed", str(exc)
        self._hub.notify()


__all__ = ["UPLOADS_NAME", "Transfer", "Transfers"]
