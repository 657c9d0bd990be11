"""Encrypted file transfer for one account: send a file, list waiting files, receive one.

The wrapper around :mod:`pqcall.crypto.filecrypt` (the format) that adds the
server's file routes (``docs/server.md``) and the home directory::

    sender                                  server                     recipient
      check NAME's identity against the pin
      encrypt PATH -> outgoing/<key>.pqf
      POST /files {recipient, size}    ->   201 {file_id}
      PUT /files/<id>/content?offset=N ->   stored                ->  push event file.waiting
                                            GET /files            <-  inbox
                                            GET /files/<id>/content  (Range: bytes=N-)
                                                                  ->  incoming/<id>.pqf
                                                                      check the sender's pin,
                                                                      decrypt to OUT/.<id>.part,
                                                                      finish(), rename
                                            DELETE /files/<id>    <-

Resuming. An upload's state (recipient, source path, size and mtime, file id)
is kept in ``outgoing/<key>.json`` next to its ciphertext, ``<key>`` naming
the pair (recipient, absolute path): sending the same path to the same user
again asks the server how many bytes it holds and continues from there. A
source that changed since is encrypted again and the stale upload cancelled.
A download appends to ``incoming/<file id>.pqf`` and continues with a
``Range`` request.

Atomic receive. Plaintext goes to a hidden temporary file in the output
folder and is renamed to the (sanitized) name inside the encrypted file only
after :meth:`~pqcall.crypto.filecrypt.FileDecryptor.finish` verified the whole
file and the sender's signature; an existing file is never overwritten
(``name (1).ext``). A file that fails any check leaves nothing under a final
name, its local ciphertext is dropped (so a new attempt downloads it again)
and the server keeps its copy.

Memory use is constant: files are streamed in pieces of at most
:data:`UPLOAD_BLOCK_BYTES` or :data:`~pqcall.client.api.DOWNLOAD_CHUNK_BYTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import re
import stat
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from pqcall.client.api import ServerApi
from pqcall.client.contacts import Contacts
from pqcall.client.home import Home
from pqcall.client.peers import CheckedPeer, check_peer
from pqcall.client.privatefile import make_private_dir, read_bounded, write_atomic
from pqcall.crypto.filecrypt import DEFAULT_CONTENT_TYPE, decrypt_stream, encrypt_stream
from pqcall.crypto.fileformat import FileInfo
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import (
    ApiError,
    FileCryptoError,
    KeystoreError,
    ServerUnreachable,
    TransferError,
)
from pqcall.safefile import FILE_MODE, remove_quietly
from pqcall.signaling import usernames
from pqcall.signaling.messages import FILE_ID_PATTERN, FileView

logger = logging.getLogger(__name__)

OUTGOING_NAME = "outgoing"
INCOMING_NAME = "incoming"
CIPHERTEXT_SUFFIX = ".pqf"
STATE_SUFFIX = ".json"
STATE_FORMAT = "pqcall upload"
STATE_VERSION = 1
MAX_STATE_BYTES = 64 * 1024

UPLOAD_BLOCK_BYTES = 256 * 1024  # ciphertext bytes read per piece of an upload
READ_BLOCK_BYTES = 256 * 1024  # plaintext/ciphertext bytes read per step of encrypt/decrypt
UPLOAD_ATTEMPTS = 4  # tries of one upload run before giving up (rerun to resume)
RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # pause before the 2nd, 3rd, 4th try
RETRYABLE_STATUSES = frozenset({401, 404, 409})  # refused token, upload gone, wrong offset

FALLBACK_NAME = "received-file"  # when nothing of the sender's name is usable
MAX_SAVED_NAME_BYTES = 200  # UTF-8 bytes of a saved name, leaving room for " (NNN)"
MAX_SUFFIX_BYTES = 16  # an extension kept when a long name is shortened
MAX_NAME_TRIES = 1000  # "name (1)" ... "name (999)"

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: phase is ``encrypting``, ``uploading``,
``downloading`` or ``decrypting``; bytes done of total. Called from a worker thread
while encrypting or decrypting."""


@dataclass(frozen=True, slots=True)
class SentFile:
    """A file that reached the server completely."""

    file_id: str
    """The server's id of the transfer (what the recipient passes to ``receive``)."""
    recipient: str
    """Who can decrypt it."""
    name: str
    """The file name sent, inside the encryption."""
    size: int
    """Plaintext bytes."""
    ciphertext_size: int
    """Bytes stored on the server (padded: it hides the exact size)."""
    resumed_from: int
    """Ciphertext bytes the server already held when this run started uploading."""
    seconds: float
    """Wall time of this run, encryption included."""

    def to_json(self) -> dict[str, Any]:
        """The object ``pqcall send-file --json`` prints."""
        return {
            "file_id": self.file_id,
            "recipient": self.recipient,
            "name": self.name,
            "size": self.size,
            "ciphertext_size": self.ciphertext_size,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.size / 1e6 / self.seconds, 3) if self.seconds > 0 else None,
        }


@dataclass(frozen=True, slots=True)
class WaitingFile:
    """A complete file on the server for us, as far as can be known before decrypting."""

    view: FileView
    """What the server says: id, sender, ciphertext size, times."""
    sender_trust: str
    """``verified``, ``pinned``, ``new`` (never seen) or ``key changed`` (a warning)."""

    def to_json(self) -> dict[str, Any]:
        """One entry of ``pqcall inbox --json``."""
        return {
            "file_id": self.view.file_id,
            "sender": self.view.sender,
            "sender_trust": self.sender_trust,
            "ciphertext_size": self.view.size,
            "created": self.view.created,
            "expires": self.view.expires,
        }


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A file downloaded, verified, decrypted and saved."""

    file_id: str
    """The server's id of the transfer."""
    sender: str
    """Who signed it (their pinned identity)."""
    sender_verified: bool
    """Whether the user verified the sender's safety number."""
    path: Path
    """Where the plaintext was saved."""
    name: str
    """The name the sender gave (untrusted; :attr:`path` holds the sanitized one)."""
    size: int
    """Plaintext bytes."""
    content_type: str
    """The sender's media type (untrusted)."""
    created: int
    """The sender's timestamp, unix seconds (untrusted)."""
    deleted: bool
    """Whether the server confirmed it deleted its copy."""
    seconds: float
    """Wall time of this run."""

    def to_json(self) -> dict[str, Any]:
        """The object ``pqcall receive --json`` prints."""
        return {
            "file_id": self.file_id,
            "sender": self.sender,
            "sender_verified": self.sender_verified,
            "path": str(self.path),
            "name": self.name,
            "size": self.size,
            "content_type": self.content_type,
            "created": self.created,
            "deleted_on_server": self.deleted,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.size / 1e6 / self.seconds, 3) if self.seconds > 0 else None,
        }


@dataclass(frozen=True, slots=True)
class _Upload:
    """The state of one pending upload, kept in ``outgoing/<key>.json``."""

    recipient: str
    path: str
    size: int
    mtime_ns: int
    name: str
    ciphertext_size: int
    file_id: str | None


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
        self._api = api  # the server
        self._account = account  # our private keys
        self._contacts = contacts  # pins
        self._clock = clock  # unix time

    @property
    def outgoing_dir(self) -> Path:
        """Ciphertexts and states of uploads not yet complete."""
        return self.home.path / OUTGOING_NAME

    @property
    def incoming_dir(self) -> Path:
        """Ciphertexts being downloaded."""
        return self.home.path / INCOMING_NAME

    # ---------------------------------------------------------------- send

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
        started = time.monotonic()
        report = progress or _no_progress
        recipient = usernames.normalize(name)
        source = Path(path).absolute()
        info = _source_stat(source)
        peer = await check_peer(self._api, self._contacts, recipient)
        key = _upload_key(recipient, source)
        upload = self._load_upload(key)
        if upload is not None and not self._is_resumable(upload, key, info):
            await self._abandon(upload, key)
            upload = None
        if upload is None:
            upload = await self._encrypt(key, peer, source, info, report)
        upload, resumed_from = await self._upload(key, upload, report)
        self._forget(key)
        return SentFile(
            file_id=upload.file_id or "",
            recipient=recipient,
            name=upload.name,
            size=upload.size,
            ciphertext_size=upload.ciphertext_size,
            resumed_from=resumed_from,
            seconds=time.monotonic() - started,
        )

    def _is_resumable(self, upload: _Upload, key: str, info: os.stat_result) -> bool:
        ciphertext = self._ciphertext_path(key)
        try:
            length = ciphertext.stat().st_size
        except OSError:
            return False
        return (upload.size, upload.mtime_ns, upload.ciphertext_size) == (
            info.st_size,
            info.st_mtime_ns,
            length,
        )

    async def _encrypt(
        self,
        key: str,
        peer: CheckedPeer,
        source: Path,
        info: os.stat_result,
        report: Progress,
    ) -> _Upload:
        name = source.name
        content_type = mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE
        target = self._ciphertext_path(key)
        make_private_dir(self.home.path)
        make_private_dir(self.outgoing_dir)

        def work() -> int:
            with open(source, "rb") as src, _open_private(target) as dst:
                reader = _CountingReader(src, lambda done: report("encrypting", done, info.st_size))
                written = encrypt_stream(
                    reader,
                    dst,
                    self._account.identity,
                    peer.identity,
                    peer.bundle,
                    name=name,
                    created=int(self._clock()),
                    size=info.st_size,
                    content_type=content_type,
                )
                dst.flush()
                os.fsync(dst.fileno())
                return written

        try:
            written = await asyncio.to_thread(work)
        except OSError as exc:
            remove_quietly(target)
            raise TransferError(f"cannot encrypt {source}: {exc.strerror}") from None
        except BaseException:
            remove_quietly(target)
            raise
        upload = _Upload(
            recipient=peer.name,
            path=str(source),
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            name=name,
            ciphertext_size=written,
            file_id=None,
        )
        self._save_upload(key, upload)
        return upload

    async def _upload(self, key: str, upload: _Upload, report: Progress) -> tuple[_Upload, int]:
        """Bring the upload to ``stored``; returns the state and where this run started."""
        total = upload.ciphertext_size
        resumed_from: int | None = None
        failures = 0
        while True:
            # where is the server?
            if upload.file_id is None:
                view = await self._api.create_file(upload.recipient, total)
                upload = replace(upload, file_id=view.file_id)
                self._save_upload(key, upload)
            else:
                try:
                    view = await self._api.file_status(upload.file_id)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    logger.info("upload %s is gone from the server; starting again", upload.file_id)
                    upload = replace(upload, file_id=None)
                    self._save_upload(key, upload)
                    continue
                if view.size != total:
                    raise TransferError(
                        f"the server holds upload {view.file_id} as {view.size} bytes, not {total}"
                    )
            if resumed_from is None:
                resumed_from = view.received
                if view.received:
                    logger.info("resuming upload %s at byte %d", view.file_id, view.received)
            if view.state == "stored":
                report("uploading", total, total)
                return upload, resumed_from
            # send the rest
            offset = view.received
            try:
                view = await self._api.upload(
                    view.file_id,
                    offset,
                    self._pieces(key, offset, total, report),
                    total - offset,
                )
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in RETRYABLE_STATUSES:
                    raise
                failures += 1
                if failures >= UPLOAD_ATTEMPTS:
                    raise
                logger.info("upload interrupted (%s); asking the server where it is", exc)
                await asyncio.sleep(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1])
                continue
            if view.state == "stored":
                return upload, resumed_from

    async def _pieces(
        self, key: str, offset: int, total: int, report: Progress
    ) -> AsyncIterator[bytes]:
        with open(self._ciphertext_path(key), "rb") as file:
            file.seek(offset)
            done = offset
            while done < total:
                piece = file.read(min(UPLOAD_BLOCK_BYTES, total - done))
                if not piece:
                    raise TransferError("the pending ciphertext is shorter than recorded")
                done += len(piece)
                yield piece
                report("uploading", done, total)

    async def _abandon(self, upload: _Upload, key: str) -> None:
        """Drop a pending upload whose source changed, cancelling it on the server."""
        if upload.file_id is not None:
            try:
                await self._api.delete_file(upload.file_id)
            except ApiError as exc:
                logger.info("could not cancel stale upload %s: %s", upload.file_id, exc)
        self._forget(key)

    def _ciphertext_path(self, key: str) -> Path:
        return self.outgoing_dir / f"{key}{CIPHERTEXT_SUFFIX}"

    def _state_path(self, key: str) -> Path:
        return self.outgoing_dir / f"{key}{STATE_SUFFIX}"

    def _load_upload(self, key: str) -> _Upload | None:
        path = self._state_path(key)
        try:
            data = read_bounded(path, "upload state", MAX_STATE_BYTES)
        except KeystoreError:
            return None
        if data is None:
            return None
        try:
            value = json.loads(data)
            if value.get("format") != STATE_FORMAT or value.get("version") != STATE_VERSION:
                raise ValueError("not an upload state")
            upload = _Upload(**value["upload"])
        except (ValueError, TypeError, KeyError, AttributeError):
            logger.info("ignoring unreadable upload state %s", path)
            return None
        if upload.file_id is not None and not _is_file_id(upload.file_id):
            return None
        return upload

    def _save_upload(self, key: str, upload: _Upload) -> None:
        document = {"format": STATE_FORMAT, "version": STATE_VERSION, "upload": asdict(upload)}
        write_atomic(self._state_path(key), json.dumps(document).encode("utf-8"), "upload state")

    def _forget(self, key: str) -> None:
        remove_quietly(self._state_path(key))
        remove_quietly(self._ciphertext_path(key))

    # ---------------------------------------------------------------- inbox

    async def inbox(self) -> list[WaitingFile]:
        """Complete files waiting for us, oldest first, with what we know of each sender."""
        waiting = []
        for view in await self._api.inbox():
            waiting.append(WaitingFile(view, self._trust(view.sender)))
        return waiting

    def _trust(self, sender: str) -> str:
        try:
            contact = self._contacts.get(sender)
        except ValueError:
            return "new"
        if contact is None:
            return "new"
        if contact.key_changed is not None:
            return "key changed"
        return "verified" if contact.verified else "pinned"

    # ---------------------------------------------------------------- receive

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
        started = time.monotonic()
        report = progress or _no_progress
        if not _is_file_id(file_id):
            raise TransferError(f"{file_id!r} is not a file id (32 hex digits, from pqcall inbox)")
        try:
            view = await self._api.file_status(file_id)
        except ApiError as exc:
            if exc.status in (403, 404):
                raise TransferError(f"no file {file_id} waiting for you on the server") from None
            raise
        if view.recipient != self._api.username:
            raise TransferError(f"file {file_id} is for {view.recipient}, not for you")
        if view.state != "stored":
            raise TransferError(f"file {file_id} from {view.sender} is still being uploaded")
        peer = await check_peer(self._api, self._contacts, view.sender)
        ciphertext = await self._download(view, report)
        folder = Path(out_dir) if out_dir is not None else self.home.received_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransferError(f"cannot create {folder}: {exc.strerror}") from None
        try:
            saved, info = await asyncio.to_thread(
                self._decrypt, ciphertext, folder, view, peer, report
            )
        except FileCryptoError as exc:
            remove_quietly(ciphertext)  # a new attempt downloads it again
            raise FileCryptoError(
                f"refused file {file_id} from {view.sender}: {exc}; nothing was saved"
                " (the server keeps its copy)"
            ) from None
        deleted = True
        try:
            await self._api.delete_file(file_id)
        except (ApiError, ServerUnreachable) as exc:
            logger.warning("saved %s, but the server did not delete its copy: %s", saved, exc)
            deleted = False
        remove_quietly(ciphertext)
        return ReceivedFile(
            file_id=file_id,
            sender=view.sender,
            sender_verified=peer.is_verified,
            path=saved,
            name=info.name,
            size=info.size,
            content_type=info.content_type,
            created=info.created,
            deleted=deleted,
            seconds=time.monotonic() - started,
        )

    async def _download(self, view: FileView, report: Progress) -> Path:
        """The complete ciphertext of ``view`` in ``incoming/``, resuming a partial one."""
        make_private_dir(self.home.path)
        make_private_dir(self.incoming_dir)
        target = self.incoming_dir / f"{view.file_id}{CIPHERTEXT_SUFFIX}"
        try:
            have = target.stat().st_size
        except FileNotFoundError:
            have = 0
        if have > view.size:
            remove_quietly(target)
            have = 0
        if have < view.size:
            if have:
                logger.info("resuming download of %s at byte %d", view.file_id, have)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
            with os.fdopen(fd, "ab") as file:
                try:
                    async for piece in self._api.download(view.file_id, have):
                        if have + len(piece) > view.size:
                            raise TransferError(f"the server sent more than {view.size} bytes")
                        file.write(piece)
                        have += len(piece)
                        report("downloading", have, view.size)
                except ApiError as exc:
                    if exc.status != 416:  # 416: its copy ends where ours does
                        raise
                except ServerUnreachable as exc:
                    raise ServerUnreachable(
                        f"{exc}; {have} of {view.size} bytes are here, run receive again to resume"
                    ) from None
                file.flush()
                os.fsync(file.fileno())
        if have != view.size:
            # the server's answer ended cleanly (a broken connection raises), yet short:
            # its copy is damaged, and asking again would only get the same bytes
            remove_quietly(target)
            raise TransferError(
                f"the server's copy of file {view.file_id} from {view.sender} ends at byte"
                f" {have} of {view.size}: it is damaged or was tampered with; nothing was"
                f" saved (ask {view.sender} to send it again)"
            )
        report("downloading", view.size, view.size)
        return target

    def _decrypt(
        self, ciphertext: Path, folder: Path, view: FileView, peer: CheckedPeer, report: Progress
    ) -> tuple[Path, FileInfo]:
        temp = folder / f".{view.file_id}.{os.urandom(4).hex()}.part"
        try:
            with open(ciphertext, "rb") as src, _open_private(temp, exclusive=True) as dst:
                reader = _CountingReader(src, lambda done: report("decrypting", done, view.size))
                info = decrypt_stream(
                    reader,
                    dst,
                    self._account.identity.public_key(),
                    self._account.file_keys(),
                    expected_sender=peer.identity,
                )
                if info.sender != peer.identity:  # expected_sender already enforced it
                    raise FileCryptoError("file is not from the expected sender")
                dst.flush()
                os.fsync(dst.fileno())
            saved = place_file(temp, folder, sanitize_name(info.name))
        except OSError as exc:
            remove_quietly(temp)
            raise TransferError(f"cannot write into {folder}: {exc.strerror}") from None
        except BaseException:
            remove_quietly(temp)
            raise
        return saved, info


# ---------------------------------------------------------------- names


def sanitize_name(name: str) -> str:
    """A safe file name from the (untrusted) name inside an encrypted file.

    Path separators and control or format characters (including bidirectional
    overrides that disguise an extension) become ``_``; leading dots and
    surrounding spaces go (no hidden files, no ``..``); the result has at most
    :data:`MAX_SAVED_NAME_BYTES` UTF-8 bytes, keeping a short extension; an
    empty result is :data:`FALLBACK_NAME`.
    """
    cleaned = "".join(
        "_" if char in "/\\" or unicodedata.category(char).startswith("C") else char
        for char in name
    )
    cleaned = cleaned.strip().lstrip(".").strip()
    if len(cleaned.encode("utf-8")) > MAX_SAVED_NAME_BYTES:
        stem, suffix = _split_suffix(cleaned)
        if len(suffix.encode("utf-8")) > MAX_SUFFIX_BYTES:
            stem, suffix = cleaned, ""
        room = MAX_SAVED_NAME_BYTES - len(suffix.encode("utf-8"))
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
        cleaned = stem + suffix
    if cleaned in ("", ".", ".."):
        return FALLBACK_NAME
    return cleaned


def place_file(temp: Path, folder: Path, name: str) -> Path:
    """Move ``temp`` to ``folder/name``, or ``name (1)``... if taken; never overwrite.

    The final name is claimed with ``O_EXCL`` and then replaced by ``temp``, so
    two receivers never pick the same name and an existing file is never touched.

    Raises:
        TransferError: a thousand names are taken.
        OSError: the folder cannot be written.
    """
    stem, suffix = _split_suffix(name)
    for number in range(MAX_NAME_TRIES):
        candidate = folder / (name if number == 0 else f"{stem} ({number}){suffix}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            os.replace(temp, candidate)
        except BaseException:
            remove_quietly(candidate)
            raise
        return candidate
    raise TransferError(f"no free name for {name} in {folder}")


def _split_suffix(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]


# ---------------------------------------------------------------- helpers


class _CountingReader:
    """A binary file that reports how many bytes were read from it."""

    def __init__(self, file: BinaryIO, report: Callable[[int], None]) -> None:
        self._file = file  # the source
        self._report = report  # told the running total
        self._done = 0  # bytes read so far

    def read(self, size: int = -1, /) -> bytes:
        data = self._file.read(READ_BLOCK_BYTES if size < 0 else size)
        self._done += len(data)
        self._report(self._done)
        return data


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


def _source_stat(source: Path) -> os.stat_result:
    try:
        info = source.stat()
    except OSError as exc:
        raise TransferError(f"cannot read {source}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TransferError(f"{source} is not a regular file")
    if not os.access(source, os.R_OK):
        raise TransferError(f"cannot read {source}: permission denied")
    return info


def _upload_key(recipient: str, source: Path) -> str:
    return hashlib.sha256(f"{recipient}\0{source}".encode()).hexdigest()[:32]


def _is_file_id(value: str) -> bool:
    return re.fullmatch(FILE_ID_PATTERN, value) is not None


@contextlib.contextmanager
def _open_private(path: Path, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        yield file
