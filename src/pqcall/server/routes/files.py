"""The file routes: ``/files`` (create, inbox), ``/files/{file_id}`` and its ``/content``.

Thin: each route authenticates (401), validates (422) and hands over to
:mod:`pqcall.server.file_service`, which decides 403 (not the sender or recipient,
or the wrong one of them), 404, 409, 413 and streams the bytes. The content
routes are the only ones whose bodies are not held in memory and are exempt
from the small request limit (:data:`STREAMED_PATHS`); an upload is bounded by
its file's announced size instead.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import ValidationError

from pqcall.server import file_service
from pqcall.server.auth import CurrentAccount
from pqcall.server.context import Context, api_error
from pqcall.signaling.messages import (
    FILE_ID_PATTERN,
    MAX_INBOX_FILES,
    CreateFile,
    ErrorResponse,
    FileView,
    Inbox,
)
from pqcall.signaling.usernames import MAX_RAW_USERNAME_LENGTH

STREAMED_PATHS = re.compile(r"/files/[0-9a-f]{32}/content")
"""Paths whose request bodies the route streams itself (the upload), past the body limit."""

FileIdPath = Annotated[str, Path(pattern=FILE_ID_PATTERN, description="32 lowercase hex digits")]

router = APIRouter(
    tags=["files"],
    responses={403: {"model": ErrorResponse, "description": "not allowed for this account"}},
)


@router.post("/files", status_code=status.HTTP_201_CREATED)
async def create_file(body: CreateFile, account: CurrentAccount, context: Context) -> FileView:
    """Announce an encrypted file of ``size`` bytes for ``recipient``; upload it next.

    413 when ``size`` is over the server's file limit or the sender's quota.
    """
    return file_service.view(context, await file_service.create(context, account, body))


@router.get("/files")
async def inbox(account: CurrentAccount, context: Context) -> Inbox:
    """The complete files waiting for the account, oldest first."""
    found = await context.storage.files.list_inbox(account.id, context.now(), MAX_INBOX_FILES)
    return Inbox(files=[file_service.view(context, record) for record in found])


@router.get("/files/{file_id}")
async def file_status(file_id: FileIdPath, account: CurrentAccount, context: Context) -> FileView:
    """A file's state for its sender or recipient; ``received`` is where an upload resumes."""
    return file_service.view(context, await file_service.find_file(context, file_id, account))


@router.put(
    "/files/{file_id}/content",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload(
    file_id: FileIdPath,
    offset: Annotated[int, Query(ge=0, description="where this body starts: the bytes held")],
    request: Request,
    account: CurrentAccount,
    context: Context,
    recipient: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_RAW_USERNAME_LENGTH,
            description="with size: create the file under this id first (no POST /files)",
        ),
    ] = None,
    size: Annotated[
        int | None, Query(ge=1, description="with recipient: the ciphertext bytes the file has")
    ] = None,
    bundle: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9a-f]{64}$",
            description="with recipient: SHA-256 of the recipient's key bundle used (else 412)",
        ),
    ] = None,
) -> FileView:
    """Append raw ciphertext at ``offset`` (the sender only); the rest in one PUT or several.

    With ``recipient`` and ``size``, a file ``file_id`` (drawn by the sender)
    that does not exist yet is created first, as ``POST /files`` would: create
    and upload in one request. 409 ``upload is at byte N`` when ``offset`` is
    not the number of bytes held, or the id is another file's; 413 when the
    body would pass the announced size (nothing of it is kept), the file is
    too large or over quota. When the last byte arrives the file is stored and
    the recipient gets ``file.waiting``. With ``bundle``, a new file is
    refused with 412 unless it is the SHA-256 of the recipient's current key
    bundle (the sender encrypted to a saved bundle that was replaced).
    """
    announce: CreateFile | None = None
    if (recipient is None) != (size is None):
        raise api_error(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "recipient and size go together, or neither"
        )
    if recipient is not None and size is not None:
        try:
            announce = CreateFile(recipient=recipient, size=size)
        except ValidationError:
            raise api_error(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"{recipient!r} is not a username"
            ) from None
    record = await file_service.upload(
        context, account, file_id, offset, request, announce, bundle=bundle
    )
    return file_service.view(context, record)


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the ciphertext"},
        206: {"content": {"application/octet-stream": {}}, "description": "a range of it"},
        416: {"model": ErrorResponse, "description": "the range starts past the end"},
    },
)
async def download(file_id: FileIdPath, account: CurrentAccount, context: Context) -> Response:
    """The ciphertext (the recipient only, once stored); ``Range: bytes=N-`` resumes with 206."""
    return await file_service.download(context, account, file_id)


@router.delete("/files/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(file_id: FileIdPath, account: CurrentAccount, context: Context) -> Response:
    """Delete the file: its recipient once received, or its sender to cancel."""
    await file_service.delete(context, account, file_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
