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

from pqcall.server import file_service
from pqcall.server.auth import CurrentAccount
from pqcall.server.context import Context
from pqcall.signaling.messages import (
    FILE_ID_PATTERN,
    MAX_INBOX_FILES,
    CreateFile,
    ErrorResponse,
    FileView,
    Inbox,
)

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
) -> FileView:
    """Append raw ciphertext at ``offset`` (the sender only); the rest in one PUT or several.

    409 ``upload is at byte N`` when ``offset`` is not the number of bytes held;
    413 when the body would pass the announced size (nothing of it is kept).
    When the last byte arrives the file is stored and the recipient gets ``file.waiting``.
    """
    record = await file_service.upload(context, account, file_id, offset, request)
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
