"""The file service: encrypted files stored for a recipient, between the routes and storage.

The server keeps opaque ciphertext: the client encrypts (name and size
included) and signs before the first byte is sent, so nothing here can read,
check or alter what it stores. A file's life::

    sender                              server                           recipient
    POST /files {recipient, size}  ->  row "uploading", empty blob
    PUT /files/{id}/content?offset=0 -> bytes appended to the blob
      (or, in one request: PUT /files/{id}/content?offset=0&recipient=R&size=N
       with an id the sender drew: row and blob created, then the bytes)
      (interrupted: GET /files/{id} says how many bytes arrived;
       PUT again at that offset)
    ... the blob reaches size      ->  fsync, "stored"  -> file.waiting (FileView) ->
                                                        <-  GET /files, GET /files/{id}/content
                                                            (Range: bytes=N- resumes)
                                   <-  blob and row gone  <-  DELETE /files/{id}

Blobs live in ``data_dir/files/`` (:mod:`pqcall.server.blob_store`); an
upload holds an exclusive lock on its blob while it writes, so a second
upload of the same file at once gets 409.

Limits (:class:`~pqcall.server.settings.ServerSettings`): ``max_file_bytes``
per file, ``file_quota_bytes`` per sender over its files not yet deleted
(uploading or stored), :data:`MAX_FILES_PER_SENDER` such files, and
:data:`MAX_TRANSFERS_PER_ACCOUNT` uploads and downloads at once per account
(in this process). A complete file is deleted ``file_ttl_s`` after it was
completed if the recipient has not deleted it; an upload that receives no
byte for :data:`~pqcall.server.file_sweeper.ABANDONED_UPLOAD_S` is deleted;
:class:`~pqcall.server.file_sweeper.FileSweeper` does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Request, status
from sqlalchemy.exc import IntegrityError
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from pqcall.safefile import write_all
from pqcall.server.auth import account_named
from pqcall.server.blob_store import (
    BLOB_MODE,
    FILE_ID_BYTES,
    FILES_DIR,
    blob_of,
    discard_blob,
    files_dir,
    fsync_dir,
    locked_blob,
    received_bytes,
)
from pqcall.server.context import AppContext, api_error
from pqcall.server.push import event_hub
from pqcall.server.storage import (
    FILE_STORED,
    FILE_UPLOADING,
    AccountRecord,
    FileLimitReached,
    FileRecord,
)
from pqcall.signaling.messages import (
    EVENT_FILE_WAITING,
    FILE_SENDER_HEADER,
    FILE_SIZE_HEADER,
    CreateFile,
    FileView,
)

logger = logging.getLogger(__name__)

WRITE_BUFFER_BYTES = 1024 * 1024  # bytes gathered from the request before one disk write
DOWNLOAD_PIECE_BYTES = 1024 * 1024  # bytes read from the blob and sent at once
MAX_FILES_PER_SENDER = 1000  # files not yet deleted, uploading or stored
MAX_TRANSFERS_PER_ACCOUNT = 4  # uploads and downloads running at once, per account


def view(context: AppContext, record: FileRecord) -> FileView:
    """The file as its sender or recipient sees it."""
    return FileView(
        file_id=record.file_id,
        sender=record.sender,
        recipient=record.recipient,
        size=record.size,
        received=received_bytes(context, record),
        state=record.state,  # type: ignore[arg-type]  # only the two states are written
        created=record.created,
        expires=record.expires,
    )


# ---------------------------------------------------------------- transfers at once


class _Transfers:
    """Uploads and downloads running per account in this process."""

    def __init__(self) -> None:
        self.running: Counter[int] = Counter()  # account id -> transfers running

    @contextlib.asynccontextmanager
    async def slot(self, account_id: int) -> AsyncIterator[None]:
        """Hold one of the account's transfer slots, or 429 if all are taken."""
        if self.running[account_id] >= MAX_TRANSFERS_PER_ACCOUNT:
            raise api_error(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many transfers at once: at most {MAX_TRANSFERS_PER_ACCOUNT} per account",
                {"Retry-After": "1"},
            )
        self.running[account_id] += 1
        try:
            yield
        finally:
            self.running[account_id] -= 1
            if not self.running[account_id]:
                del self.running[account_id]


TRANSFERS_EXTRA = "file_transfers"  # context.extras key of the _Transfers


def _transfers(context: AppContext) -> _Transfers:
    transfers = context.extras.get(TRANSFERS_EXTRA)
    if not isinstance(transfers, _Transfers):
        transfers = context.extras[TRANSFERS_EXTRA] = _Transfers()
    return transfers


# ---------------------------------------------------------------- actions


async def find_file(context: AppContext, file_id: str, account: AccountRecord) -> FileRecord:
    """The file, if ``account`` is its sender or recipient.

    Raises:
        HTTPException: 404 no such file (or expired), 403 neither sender nor recipient.
    """
    record = await context.storage.files.get_file(file_id)
    if record is None or record.expires <= context.now():
        raise api_error(status.HTTP_404_NOT_FOUND, "no such file")
    if account.id not in (record.sender_id, record.recipient_id):
        raise api_error(status.HTTP_403_FORBIDDEN, "not the sender or recipient of this file")
    return record


async def create(
    context: AppContext, sender: AccountRecord, body: CreateFile, file_id: str | None = None
) -> FileRecord:
    """Announce a file: check recipient, size and quota, then create the row and an empty blob.

    ``file_id`` is the id the sender drew (the one-request upload); a new one otherwise.

    Raises:
        HTTPException: 404 unknown recipient, 413 too large or over quota,
            409 ``file_id`` is taken.
    """
    settings = context.settings
    recipient = await account_named(context, body.recipient)
    if body.size > settings.max_file_bytes:
        raise api_error(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"file too large: {body.size} bytes, the limit is {settings.max_file_bytes}",
        )
    if file_id is None:
        file_id = secrets.token_hex(FILE_ID_BYTES)
    now = context.now()
    directory = files_dir(context)
    try:
        record = await context.storage.files.create_file(
            file_id,
            sender.id,
            recipient.id,
            body.size,
            f"{FILES_DIR}/{file_id}",
            now,
            now + settings.file_ttl_s,
            quota_bytes=settings.file_quota_bytes,
            max_files=MAX_FILES_PER_SENDER,
        )
    except IntegrityError:  # a drawn id that another request took first
        raise api_error(status.HTTP_409_CONFLICT, f"file id {file_id} is taken") from None
    except FileLimitReached as exc:
        if exc.files >= MAX_FILES_PER_SENDER:
            message = (
                f"quota exceeded: you have {exc.files} files not yet received,"
                f" the limit is {MAX_FILES_PER_SENDER}"
            )
        else:
            message = (
                f"quota exceeded: your files not yet received hold {exc.used_bytes} bytes,"
                f" {body.size} more would pass your quota of {settings.file_quota_bytes}"
            )
        raise api_error(status.HTTP_413_CONTENT_TOO_LARGE, message) from None
    path = directory / file_id
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, BLOB_MODE)
        try:
            os.fchmod(fd, BLOB_MODE)
            os.utime(fd, (now, now))  # the upload's clock starts now
        finally:
            os.close(fd)
    except OSError:
        await context.storage.files.delete_file(file_id)
        raise
    logger.info(
        "file %s: %s sends %d bytes to %s", file_id, sender.username, body.size, recipient.username
    )
    return record


async def upload(
    context: AppContext,
    account: AccountRecord,
    file_id: str,
    offset: int,
    request: Request,
    announce: CreateFile | None = None,
    *,
    bundle: str | None = None,
) -> FileRecord:
    """Append the request's body to the file's blob at ``offset``, streaming.

    With ``announce``, a file ``file_id`` that does not exist yet is created
    first (as :func:`create` does, under the sender's id), so a small file
    takes one request; one that exists must have that sender, recipient and
    size (a retried creating upload appends like any other).

    When the blob reaches the file's size it is synced to disk, the file becomes
    stored, and the recipient gets ``file.waiting``. A client that loses its
    connection finds what arrived in :attr:`FileView.received` and sends the rest
    from there; a PUT with an empty body at ``offset == size`` completes a file
    whose bytes all arrived but whose completion did not (a server crash).

    Raises:
        HTTPException: 403 not the sender, 404 no such file, 409 complete already,
            another upload running, or ``offset`` is not where the upload is,
            413 the body would pass the file's size (nothing of it is kept),
            507 the disk is full (nothing of the failed write is kept);
            with ``announce``: 404 unknown recipient, 413 too large or over quota,
            409 the id is another file's.
    """
    if announce is None:
        record = await find_file(context, file_id, account)
    else:
        record = await _announced(context, account, file_id, offset, announce, bundle)
    if record.sender_id != account.id:
        raise api_error(status.HTTP_403_FORBIDDEN, "only the sender can upload this file")
    if record.state != FILE_UPLOADING:
        raise api_error(status.HTTP_409_CONFLICT, "file is already complete")
    declared = request.headers.get("content-length")
    async with _transfers(context).slot(account.id):
        try:
            with locked_blob(blob_of(context, record)) as fd:
                if fd is None:
                    raise api_error(
                        status.HTTP_409_CONFLICT, "another upload of this file is in progress"
                    )
                held = os.fstat(fd).st_size
                if offset != held:
                    raise api_error(status.HTTP_409_CONFLICT, f"upload is at byte {held}")
                if (
                    declared is not None
                    and declared.isdigit()
                    and held + int(declared) > record.size
                ):
                    raise _too_long(record, held)
                os.lseek(fd, held, os.SEEK_SET)
                written = await _receive(context, request, fd, record, held)
                if written < record.size:
                    return record
                await asyncio.to_thread(os.fsync, fd)
                await asyncio.to_thread(fsync_dir, blob_of(context, record).parent)
        except FileNotFoundError:
            raise api_error(status.HTTP_404_NOT_FOUND, "no such file") from None
    # the row and the recipient's event in one commit
    async with event_hub(context).transaction((record.recipient_id,)) as outbox:
        stored = await context.storage.files.complete_file(
            file_id, context.now() + context.settings.file_ttl_s, connection=outbox.connection
        )
        if stored is None:  # deleted (cancelled, swept) while the bytes arrived
            raise api_error(status.HTTP_404_NOT_FOUND, "no such file")
        payload = view(context, stored).model_dump(mode="json")
        outbox.publish(stored.recipient_id, EVENT_FILE_WAITING, payload)
    logger.info("file %s: stored for %s", file_id, stored.recipient)
    return stored


async def _announced(
    context: AppContext,
    account: AccountRecord,
    file_id: str,
    offset: int,
    body: CreateFile,
    bundle: str | None,
) -> FileRecord:
    """The file a creating upload appends to: made now, or the same one made before.

    ``bundle``: the SHA-256 (hex) of the recipient's key bundle the sender
    encrypted to (from its own saved copy); a new file is refused with 412 if
    the recipient's current bundle is another, so the sender fetches it again.
    """
    existing = await context.storage.files.get_file(file_id)
    if existing is None:
        if offset != 0:
            raise api_error(status.HTTP_409_CONFLICT, "upload is at byte 0")
        if bundle is not None:
            recipient = await account_named(context, body.recipient)
            current = await context.storage.accounts.current_bundle(recipient.id)
            if current is None or hashlib.sha256(current.bundle).hexdigest() != bundle:
                raise api_error(
                    status.HTTP_412_PRECONDITION_FAILED,
                    f"{recipient.username}'s key bundle is not the one you encrypted to:"
                    " fetch it again",
                )
        return await create(context, account, body, file_id)
    if (existing.sender_id, existing.recipient, existing.size) != (
        account.id,
        body.recipient,
        body.size,
    ):
        raise api_error(status.HTTP_409_CONFLICT, f"file id {file_id} is taken")
    return await find_file(context, file_id, account)


def _too_long(record: FileRecord, held: int) -> Exception:
    return api_error(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"upload goes past the end of the file: it has {record.size} bytes"
        f" and {record.size - held} are still to come",
    )


async def _receive(
    context: AppContext, request: Request, fd: int, record: FileRecord, held: int
) -> int:
    """Stream the body into ``fd`` (positioned at ``held``); the blob's size afterwards.

    Memory stays at one :data:`WRITE_BUFFER_BYTES` buffer. A body that would
    pass the file's size, or a failed write, leaves the blob as it was before
    the failing part (413, 507); a client that disconnects keeps what arrived.
    """
    buffer = bytearray()
    written = held  # bytes on disk

    async def flush() -> None:
        nonlocal written
        if not buffer:
            return
        data = bytes(buffer)
        buffer.clear()
        try:
            await asyncio.to_thread(write_all, fd, data)
        except OSError as exc:
            os.ftruncate(fd, written)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                logger.error("file %s: the disk is full", record.file_id)
                raise api_error(
                    status.HTTP_507_INSUFFICIENT_STORAGE, "the server is out of disk space"
                ) from None
            raise
        written += len(data)
        now = context.now()
        os.utime(fd, (now, now))  # the last byte's time, on the server's clock

    try:
        async for chunk in request.stream():
            if written + len(buffer) + len(chunk) > record.size:
                buffer.clear()
                os.ftruncate(fd, held)
                raise _too_long(record, held)
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER_BYTES:
                await flush()
    except ClientDisconnect:
        logger.info("file %s: upload interrupted at byte %d", record.file_id, written + len(buffer))
    await flush()
    return written


async def download(context: AppContext, account: AccountRecord, file_id: str) -> Response:
    """The ciphertext of a stored file, for its recipient; ``Range: bytes=N-`` resumes (206).

    The answer names the sender and the file's size
    (:data:`~pqcall.signaling.messages.FILE_SENDER_HEADER`, ``FILE_SIZE_HEADER``),
    so a recipient needs no ``GET /files/{id}`` first.

    Raises:
        HTTPException: 403 not the recipient, 404 no such file, 409 still uploading,
            429 too many transfers at once.
    """
    record = await find_file(context, file_id, account)
    if record.recipient_id != account.id:
        raise api_error(status.HTTP_403_FORBIDDEN, "only the recipient can download this file")
    if record.state != FILE_STORED:
        received = received_bytes(context, record)
        raise api_error(
            status.HTTP_409_CONFLICT,
            f"file is still uploading: {received} of {record.size} bytes have arrived",
        )
    path = blob_of(context, record)
    try:
        stat_result = path.stat()
    except FileNotFoundError:
        raise api_error(status.HTTP_404_NOT_FOUND, "no such file") from None
    return _CountedFileResponse(_transfers(context), account.id, path, stat_result, record)


class _CountedFileResponse(FileResponse):
    """A file response that holds one of the account's transfer slots while it streams.

    A range that starts at or past the end gets the API's JSON error (416),
    not Starlette's plain-text one. The file is read and sent in pieces of
    :data:`DOWNLOAD_PIECE_BYTES` (Starlette's 64 KiB costs a worker-thread
    read and an ASGI message per piece: about a third of the server's CPU for
    a large file).
    """

    chunk_size = DOWNLOAD_PIECE_BYTES

    def __init__(
        self,
        transfers: _Transfers,
        account_id: int,
        path: Path,
        stat_result: os.stat_result,
        record: FileRecord,
    ) -> None:
        super().__init__(
            path,
            stat_result=stat_result,
            media_type="application/octet-stream",
            headers={
                "Cache-Control": "no-store",
                FILE_SENDER_HEADER: record.sender,
                FILE_SIZE_HEADER: str(record.size),
            },
        )
        self._transfers = transfers  # where the slot is taken
        self._account_id = account_id  # whose slot
        self._size = stat_result.st_size  # the blob's size when the download began

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = self._size
        start = _open_range_start(dict(scope["headers"]).get(b"range", b""))
        if start is not None and start >= size:
            reply = JSONResponse(
                {"error": f"range starts at byte {start}, but the file has {size} bytes"},
                status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
                headers={"Content-Range": f"bytes */{size}"},
            )
            await reply(scope, receive, send)
            return
        async with self._transfers.slot(self._account_id):
            await super().__call__(scope, receive, send)


def _open_range_start(header: bytes) -> int | None:
    """N of ``Range: bytes=N-``, else ``None`` (other forms are left to Starlette)."""
    unit, _, spec = header.decode("latin-1").strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or last.strip() or not first.isdigit():
        return None
    return int(first)


async def delete(context: AppContext, account: AccountRecord, file_id: str) -> None:
    """Delete the row and the blob: the recipient once it has the file, the sender to cancel.

    Raises:
        HTTPException: 403 neither sender nor recipient, 404 no such file.
    """
    record = await find_file(context, file_id, account)
    if not await context.storage.files.delete_file(file_id):
        raise api_error(status.HTTP_404_NOT_FOUND, "no such file")
    await discard_blob(blob_of(context, record))
    who = "recipient" if account.id == record.recipient_id else "sender"
    logger.info("file %s: deleted by its %s", file_id, who)
