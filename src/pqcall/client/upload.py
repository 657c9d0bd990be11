"""Sending a file: encrypt it to the recipient while uploading it, resume an upload that broke off.

The sending half of :class:`~pqcall.client.files.FileTransfers`::

    sender                                  server
      NAME's saved bundle, verified under the pinned identity
        (none saved: GET /users/NAME, checked against the pin, saved)
      new file key, header and file id -> outgoing/<key>.json (0600, renamed into place)
      PUT /files/<id>/content?offset=0&recipient=NAME&size=N&bundle=SHA256
                                       ->   file created, bytes stored (file.waiting)
                                            (412: NAME's bundle changed: fetch, new key)
          (read, encrypt, send: no ciphertext on disk; one request per file)
      resuming: GET /files/<id> (404: never created, a new id) then
      PUT /files/<id>/content?offset=RECEIVED

Resuming. An upload's state is kept in ``outgoing/<key>.json``, ``<key>``
naming the pair (recipient, absolute path): the source's size, mtime, ctime
and inode, the file id, the encryption secrets (file key and header, so the
same plaintext encrypts to the same bytes), the last checkpoint and, once made,
the signature (:mod:`pqcall.client.upload_stream`). Sending the same path to
the same user again asks the server how many bytes it holds, encrypts again
from the start, checks the checkpoint's digest and sends the rest. A source
whose stat differs, or whose digest at the checkpoint differs, is never
resumed: the stale upload is cancelled and the file sent afresh under a new
key. One run tries :data:`UPLOAD_ATTEMPTS` times before giving up (run it
again to resume). Disk use is the state file; memory use is bounded
(:data:`~pqcall.client.upload_stream.MAX_HELD_BYTES` when resuming, two
batches otherwise). The state holds the file key until the upload is
complete: it is as private as the source itself (0600 in a 0700 home).

Durability. States are replaced by a rename without fsync (each fsync cost
8 ms or more on a busy machine, twice per file). A process that dies keeps
the last state whole; a power cut may bring back an earlier one, or none (an
empty file is unreadable, so none), which is safe: with none, the file is
sent afresh under a new key and id (the server sweeps the old upload); with
an earlier one, either the server holds no byte past its checkpoint (the
resume encrypts the same bytes again) or it does, and :class:`CannotResume`
starts over under a new key. A key never seals other bytes than those the
server may hold, and a signature the server may have seen part of is never
replaced by another (the checkpoint before the last batch lies before it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
import os
import secrets
import stat
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pqcall.client.api import ServerApi
from pqcall.client.contacts import Contacts
from pqcall.client.file_names import CIPHERTEXT_SUFFIX, is_file_id
from pqcall.client.file_stream import Progress, no_progress, replace_quickly
from pqcall.client.home import Home
from pqcall.client.peers import CheckedPeer, check_peer
from pqcall.client.privatefile import make_private_dir, read_bounded
from pqcall.client.upload_stream import CannotResume, Checkpoint, CipherStream, SourceChanged
from pqcall.crypto.fileencryptor import DEFAULT_CONTENT_TYPE, EncryptionSecrets, FileEncryptor
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.keystore import AccountSecrets
from pqcall.crypto.pinning import PinMatched
from pqcall.exceptions import (
    ApiError,
    BadSignature,
    DecodeError,
    KeystoreError,
    LocalProtocolError,
    ServerUnreachable,
    TransferError,
)
from pqcall.safefile import remove_quietly
from pqcall.signaling import usernames

logger = logging.getLogger(__name__)

OUTGOING_NAME = "outgoing"  # the home's folder of pending uploads
STATE_SUFFIX = ".json"
STATE_FORMAT = "pqcall upload"
STATE_VERSION = 2  # 2: streamed (secrets and checkpoint); 1 kept a ciphertext file
MAX_STATE_BYTES = 64 * 1024

UPLOAD_ATTEMPTS = 4  # tries of one upload run before giving up (rerun to resume)
RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # pause before the 2nd, 3rd, 4th try
FILE_ID_BYTES = 16  # a file id the sender draws: 32 hex digits
RETRYABLE_STATUSES = frozenset({401, 404, 409})  # refused token, upload gone, wrong offset
BUNDLES_NAME = "bundles"  # <home>/bundles/<name>.bundle: recipients' key bundles, last fetched
BUNDLE_SUFFIX = ".bundle"
MAX_BUNDLE_BYTES = 64 * 1024


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
    restarted: bool = False
    """Whether a pending upload could not be resumed and was sent again under a new key."""

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
class _Upload:
    """The state of one pending upload, kept in ``outgoing/<key>.json``."""

    recipient: str
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    name: str
    content_type: str
    created: int
    ciphertext_size: int
    file_id: str | None
    file_key: str  # hex: the secrets that make the same ciphertext again
    header: str  # hex
    checkpoint: int  # ciphertext bytes that may have left
    digest: str  # hex: the chunks' digest there
    signature: str | None  # hex, once made

    @property
    def secrets(self) -> EncryptionSecrets:
        return EncryptionSecrets(bytes.fromhex(self.file_key), bytes.fromhex(self.header))

    def at(self, checkpoint: Checkpoint) -> _Upload:
        signature = checkpoint.signature.hex() if checkpoint.signature is not None else None
        return replace(
            self,
            checkpoint=checkpoint.position,
            digest=checkpoint.digest.hex(),
            signature=signature,
        )

    def last_checkpoint(self) -> Checkpoint:
        signature = bytes.fromhex(self.signature) if self.signature is not None else None
        return Checkpoint(self.checkpoint, bytes.fromhex(self.digest), signature)


class FileSender:
    """Sends files as the account in ``home``, keeping pending uploads under ``outgoing/``.

    Args:
        home: the account's home.
        api: the account's server connection.
        account: the unlocked keys (sign what we send).
        contacts: the pins every recipient is checked against.
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
        self._create_apart = False  # the server wants POST /files before the upload

    @property
    def outgoing_dir(self) -> Path:
        """Ciphertexts and states of uploads not yet complete."""
        return self.home.path / OUTGOING_NAME

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
        report = progress or no_progress
        recipient = usernames.normalize(name)
        source = Path(path).absolute()
        info = _source_stat(source)
        peer, saved = await self._peer(recipient)
        key = _upload_key(recipient, source)
        upload = self._load_upload(key)
        if upload is not None and not _is_resumable(upload, info):
            await self._abandon(upload, key)
            upload = None
        restarted = False
        while True:
            fresh = upload is None  # its drawn id is on no server yet: no status request
            if upload is None:
                upload = await self._start(key, peer, source, info)
            try:
                upload, resumed_from = await self._upload(
                    key, upload, peer, source, report, fresh=fresh, bundle=saved
                )
                break
            except ApiError as exc:
                if exc.status != 412 or saved is None:
                    raise
                # the saved bundle was replaced: fetch it (and check the identity) again
                logger.info("%s's key bundle changed; fetching it again", recipient)
                self._forget(key)  # refused before the file was made: nothing to cancel
                peer, saved, upload = await self._fetch_peer(recipient), None, None
            except (SourceChanged, CannotResume) as exc:
                if restarted:
                    await self._abandon(upload, key)
                    raise TransferError(
                        f"{source} changed while it was being sent; nothing was sent, try again"
                    ) from None
                logger.info("not resuming the upload of %s (%s): new key", source, exc)
                await self._abandon(upload, key)
                upload, restarted = None, True
                info = _source_stat(source)
        self._forget(key)
        return SentFile(
            file_id=upload.file_id or "",
            recipient=recipient,
            name=upload.name,
            size=upload.size,
            ciphertext_size=upload.ciphertext_size,
            resumed_from=resumed_from,
            seconds=time.monotonic() - started,
            restarted=restarted,
        )

    async def _start(
        self, key: str, peer: CheckedPeer, source: Path, info: os.stat_result
    ) -> _Upload:
        """A new upload of ``source``: fresh secrets, saved before any byte leaves."""
        name = source.name
        content_type = mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE
        created = int(self._clock())
        encryptor = await asyncio.to_thread(
            FileEncryptor,
            self._account.identity,
            peer.identity,
            peer.bundle,
            name=name,
            size=info.st_size,
            created=created,
            content_type=content_type,
        )
        drawn = encryptor.secrets
        upload = _Upload(
            recipient=peer.name,
            path=str(source),
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            ctime_ns=info.st_ctime_ns,
            inode=info.st_ino,
            name=name,
            content_type=content_type,
            created=created,
            ciphertext_size=encryptor.ciphertext_length,
            file_id=None if self._create_apart else secrets.token_hex(FILE_ID_BYTES),
            file_key=drawn.file_key.hex(),
            header=drawn.header.hex(),
            checkpoint=0,
            digest=encryptor.chunks_digest().hex(),
            signature=None,
        )
        make_private_dir(self.home.path)
        make_private_dir(self.outgoing_dir)
        self._save_upload(key, upload)
        return upload

    async def _upload(
        self,
        key: str,
        upload: _Upload,
        peer: CheckedPeer,
        source: Path,
        report: Progress,
        *,
        fresh: bool = False,
        bundle: str | None = None,
    ) -> tuple[_Upload, int]:
        """Bring the upload to ``stored``; returns the state and where this run started.

        ``fresh``: ``upload`` was just started, its id (if drawn) sent nowhere yet.
        ``bundle``: the SHA-256 of the saved bundle ``peer`` came from (the
        creating request names it: 412 if the server holds another).

        Raises:
            SourceChanged, CannotResume: start over under a new key.
        """
        total = upload.ciphertext_size
        resumed_from: int | None = None
        failures = 0
        while True:
            # where is the server?
            create_for: tuple[str, int] | None = None
            if fresh and upload.file_id is not None:
                # drawn and saved by _start: the first PUT creates the file
                fresh = False
                file_id = upload.file_id
                create_for = (upload.recipient, total)
                offset, stored = 0, False
            elif upload.file_id is None and self._create_apart:
                view = await self._api.create_file(upload.recipient, total)
                file_id = view.file_id
                upload = replace(upload, file_id=file_id)
                self._save_upload(key, upload)
                offset, stored = 0, False
            elif upload.file_id is None:
                # a new file: its id drawn and saved here, created by its first PUT
                file_id = secrets.token_hex(FILE_ID_BYTES)
                upload = replace(upload, file_id=file_id)
                self._save_upload(key, upload)
                create_for = (upload.recipient, total)
                offset, stored = 0, False
            else:
                file_id = upload.file_id
                try:
                    view = await self._api.file_status(file_id)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    # never created (the creating PUT broke off first), or swept
                    logger.info("upload %s is not on the server; starting again", upload.file_id)
                    upload = replace(upload, file_id=None)
                    continue
                if view.size != total:
                    raise TransferError(
                        f"the server holds upload {view.file_id} as {view.size} bytes, not {total}"
                    )
                offset, stored = view.received, view.state == "stored"
            if resumed_from is None:
                resumed_from = offset
                if offset:
                    logger.info("resuming upload %s at byte %d", file_id, offset)
            if stored:
                report("uploading", total, total)
                return upload, resumed_from
            # send the rest
            latest = [upload]  # the state with its newest checkpoint (saved from the thread)
            stream = await asyncio.to_thread(self._open_stream, key, latest, peer, source, offset)
            pieces = _pieces(stream, offset, report)
            try:
                view = await self._api.upload(
                    file_id, offset, pieces, total - offset, create_for=create_for, bundle=bundle
                )
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in RETRYABLE_STATUSES:
                    raise
                if isinstance(exc, ApiError) and exc.status == 404 and create_for is not None:
                    # a server older than the creating PUT: announce with POST /files
                    logger.info("the server does not create files on upload; POST /files")
                    self._create_apart = True
                    latest[0] = replace(latest[0], file_id=None)  # made `upload` below
                    continue
                failures += 1
                if failures >= UPLOAD_ATTEMPTS:
                    raise
                logger.info("upload interrupted (%s); asking the server where it is", exc)
                await asyncio.sleep(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1])
                continue
            finally:
                await pieces.aclose()  # its worker thread is done before the source closes
                stream.close()
                upload = latest[0]
            if view.state == "stored":
                return upload, resumed_from

    def _open_stream(
        self, key: str, latest: list[_Upload], peer: CheckedPeer, source: Path, offset: int
    ) -> CipherStream:
        """The upload's ciphertext from ``offset``, checked against its checkpoint (blocking)."""
        upload = latest[0]

        def save(checkpoint: Checkpoint) -> None:
            latest[0] = latest[0].at(checkpoint)
            self._save_upload(key, latest[0])

        try:
            encryptor = FileEncryptor(
                self._account.identity,
                peer.identity,
                peer.bundle,
                name=upload.name,
                size=upload.size,
                created=upload.created,
                content_type=upload.content_type,
                secrets=upload.secrets,
            )
        except (LocalProtocolError, ValueError) as exc:  # e.g. the recipient's key rotated
            raise CannotResume(str(exc)) from None
        try:
            file = open(source, "rb")
        except OSError as exc:
            raise TransferError(f"cannot read {source}: {exc.strerror}") from None
        stream = CipherStream(
            file, encryptor, offset=offset, checkpoint=upload.last_checkpoint(), save=save
        )
        try:
            stream.prime()
        except BaseException:
            stream.close()
            raise
        return stream

    async def _peer(self, name: str) -> tuple[CheckedPeer, str | None]:
        """``name``'s keys: the saved bundle under the saved identity, else the server's.

        Returns the peer and, when it came from the saved bundle, that
        bundle's SHA-256 (hex) for the creating request to name.
        """
        # a server that wants POST /files first cannot check the saved bundle: ask it
        saved = None if self._create_apart else await asyncio.to_thread(self._saved_peer, name)
        if saved is not None:
            return saved
        return await self._fetch_peer(name), None

    async def _fetch_peer(self, name: str) -> CheckedPeer:
        """``GET /users/NAME``, checked against the pin; its bundle saved for the next send."""
        peer = await check_peer(self._api, self._contacts, name)
        await asyncio.to_thread(self._save_bundle, peer)
        return peer

    def _saved_peer(self, name: str) -> tuple[CheckedPeer, str] | None:
        try:
            contact = self._contacts.get(name)
            data = read_bounded(self._bundle_path(name), "key bundle", MAX_BUNDLE_BYTES)
        except (ValueError, KeystoreError):
            return None
        if data is None or contact is None or contact.key_changed is not None:
            return None  # a key change is checked on the server, as before
        try:
            bundle = KeyBundle.decode(data)
            bundle.verify(contact.identity)  # signed by the saved identity, for this name
        except (DecodeError, BadSignature):
            return None
        if bundle.username != name:
            return None
        peer = CheckedPeer(name, contact.identity, bundle, PinMatched(contact.pin))
        return peer, hashlib.sha256(data).hexdigest()

    def _save_bundle(self, peer: CheckedPeer) -> None:
        try:
            make_private_dir(self.home.path)
            make_private_dir(self.home.path / BUNDLES_NAME)
            replace_quickly(self._bundle_path(peer.name), peer.bundle.encode())
        except (OSError, KeystoreError) as exc:  # only costs a lookup next time
            logger.info("could not save %s's key bundle: %s", peer.name, exc)

    def _bundle_path(self, name: str) -> Path:
        return self.home.path / BUNDLES_NAME / f"{name}{BUNDLE_SUFFIX}"

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
        if upload.file_id is not None and not is_file_id(upload.file_id):
            return None
        return upload

    def _save_upload(self, key: str, upload: _Upload) -> None:
        # no fsync: a power cut may bring back an earlier state or none (module
        # docstring, "Durability"); each fsync cost 8 ms or more here
        replace_quickly(self._state_path(key), _state_document(upload))

    def _forget(self, key: str) -> None:
        remove_quietly(self._state_path(key))
        remove_quietly(self._ciphertext_path(key))  # left by a version-1 upload


async def _pieces(stream: CipherStream, offset: int, report: Progress) -> AsyncGenerator[bytes]:
    """The stream's batches, the next one encrypted in a worker thread while this one is sent."""
    done = offset
    pending = asyncio.ensure_future(asyncio.to_thread(stream.next_batch))
    try:
        while batch := await pending:
            pending = asyncio.ensure_future(asyncio.to_thread(stream.next_batch))
            for piece in batch:
                yield piece
                done += len(piece)
                report("uploading", done, stream.total)
    finally:
        if not pending.done():
            await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()  # retrieved: the upload's own error is the one to report


def _state_document(upload: _Upload) -> bytes:
    document = {"format": STATE_FORMAT, "version": STATE_VERSION, "upload": asdict(upload)}
    return json.dumps(document).encode("utf-8")


def _is_resumable(upload: _Upload, info: os.stat_result) -> bool:
    # ctime cannot be set back by the owner: any write or replacement shows
    return (upload.size, upload.mtime_ns, upload.ctime_ns, upload.inode) == (
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_ino,
    )


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
