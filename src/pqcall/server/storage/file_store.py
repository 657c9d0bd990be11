"""Rows of the encrypted files stored for a recipient: :class:`FileStore`.

Only the metadata: sender, recipient, size, where the blob is, state
(``uploading`` or ``stored``) and expiry; never a file's contents (the blobs
are :mod:`pqcall.server.blob_store`'s). A sender's quota and file count are
checked and the row inserted in one conditional statement. Times are unix
seconds passed in by the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    Integer,
    Row,
    String,
    Text,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from pqcall.server.storage.models import accounts, stored_files
from pqcall.server.storage.records import (
    FILE_STORED,
    FILE_UPLOADING,
    FileLimitReached,
    FileRecord,
)

_sender = aliased(accounts, name="sender")
_recipient = aliased(accounts, name="recipient")
_FILE_SELECT = (
    select(
        stored_files,
        _sender.c.username.label("sender_name"),
        _recipient.c.username.label("recipient_name"),
    )
    .join(_sender, _sender.c.id == stored_files.c.sender_id)
    .join(_recipient, _recipient.c.id == stored_files.c.recipient_id)
)


def _file(row: Row[Any]) -> FileRecord:
    return FileRecord(
        file_id=row.id,
        sender_id=row.sender_id,
        recipient_id=row.recipient_id,
        sender=row.sender_name,
        recipient=row.recipient_name,
        size=int(row.size),
        blob_path=row.blob_path,
        state=row.state,
        created=row.created_at,
        expires=row.expires_at,
    )


class FileStore:
    """Stored files' rows. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage

    async def create_file(
        self,
        file_id: str,
        sender_id: int,
        recipient_id: int,
        size: int,
        blob_path: str,
        now: float,
        expires_at: float,
        *,
        quota_bytes: int,
        max_files: int,
    ) -> FileRecord:
        """Insert an uploading file, if the sender stays within its quota and file count.

        The check and the insert are one conditional statement, and on PostgreSQL
        the sender's account row is locked first, so concurrent requests (from any
        process) cannot together go over the quota.

        Raises:
            FileLimitReached: the sender's files not yet deleted plus ``size`` would
                exceed ``quota_bytes``, or it has ``max_files`` files already.
        """
        mine = stored_files.c.sender_id == sender_id
        used = select(func.coalesce(func.sum(stored_files.c.size), 0)).where(mine)
        count = select(func.count()).select_from(stored_files).where(mine)
        source = select(
            literal(file_id, String),
            literal(sender_id, Integer),
            literal(recipient_id, Integer),
            literal(size, BigInteger),
            literal(blob_path, Text),
            literal(FILE_UPLOADING, String),
            literal(now, Double),
            literal(expires_at, Double),
        ).where(
            used.scalar_subquery() + size <= quota_bytes,
            count.scalar_subquery() < max_files,
        )
        columns = [
            "id",
            "sender_id",
            "recipient_id",
            "size",
            "blob_path",
            "state",
            "created_at",
            "expires_at",
        ]
        async with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # serialize one sender's creates; SQLite runs one writing statement at a time
                await connection.execute(
                    select(accounts.c.id).where(accounts.c.id == sender_id).with_for_update()
                )
            result = await connection.execute(insert(stored_files).from_select(columns, source))
            if result.rowcount != 1:
                totals = (
                    await connection.execute(
                        select(used.scalar_subquery(), count.scalar_subquery())
                    )
                ).one()
                raise FileLimitReached(int(totals[0]), int(totals[1]))
            row = (await connection.execute(_FILE_SELECT.where(stored_files.c.id == file_id))).one()
        return _file(row)

    async def get_file(self, file_id: str) -> FileRecord | None:
        """The file with this id, if any (expired or not)."""
        async with self.engine.connect() as connection:
            result = await connection.execute(_FILE_SELECT.where(stored_files.c.id == file_id))
            row = result.one_or_none()
        return None if row is None else _file(row)

    async def complete_file(
        self, file_id: str, expires_at: float, *, connection: AsyncConnection | None = None
    ) -> FileRecord | None:
        """Mark an uploading file stored, with a new expiry; ``None`` if it is not uploading.

        ``connection``: an open transaction to write in (committed by its owner,
        e.g. with the ``file.waiting`` event); a transaction of its own otherwise.
        """
        async with self._begin(connection) as conn:
            result = await conn.execute(
                update(stored_files)
                .where(stored_files.c.id == file_id, stored_files.c.state == FILE_UPLOADING)
                .values(state=FILE_STORED, expires_at=expires_at)
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(_FILE_SELECT.where(stored_files.c.id == file_id))).one()
        return _file(row)

    async def delete_file(self, file_id: str, *, expected_state: str | None = None) -> bool:
        """Delete a file's row (only in ``expected_state``, if given); whether it was there."""
        conditions: list[Any] = [stored_files.c.id == file_id]
        if expected_state is not None:
            conditions.append(stored_files.c.state == expected_state)
        async with self.engine.begin() as connection:
            result = await connection.execute(delete(stored_files).where(*conditions))
        return bool(result.rowcount)

    async def list_inbox(self, recipient_id: int, now: float, limit: int = 200) -> list[FileRecord]:
        """Stored, unexpired files for ``recipient_id``, oldest first."""
        return await self._files(
            (
                stored_files.c.recipient_id == recipient_id,
                stored_files.c.state == FILE_STORED,
                stored_files.c.expires_at > now,
            ),
            limit,
        )

    async def list_expired_files(self, now: float, limit: int = 1000) -> list[FileRecord]:
        """Files (any state) whose expiry has passed, oldest first: for the sweeper."""
        return await self._files((stored_files.c.expires_at <= now,), limit)

    async def list_uploading_files(
        self, created_before: float, limit: int = 1000
    ) -> list[FileRecord]:
        """Files still uploading that were created before a time, oldest first: for the sweeper."""
        return await self._files(
            (stored_files.c.state == FILE_UPLOADING, stored_files.c.created_at < created_before),
            limit,
        )

    async def file_totals(self) -> dict[str, tuple[int, int]]:
        """``{state: (files, bytes)}`` over every file (for metrics); both states always."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(
                    stored_files.c.state,
                    func.count(),
                    func.coalesce(func.sum(stored_files.c.size), 0),
                ).group_by(stored_files.c.state)
            )
            totals = {state: (int(n), int(size)) for state, n, size in result}
        return {state: totals.get(state, (0, 0)) for state in (FILE_UPLOADING, FILE_STORED)}

    @contextlib.asynccontextmanager
    async def _begin(self, connection: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if connection is not None:
            yield connection
            return
        async with self.engine.begin() as own:
            yield own

    async def _files(self, conditions: Iterable[Any], limit: int) -> list[FileRecord]:
        async with self.engine.connect() as connection:
            result = await connection.execute(
                _FILE_SELECT.where(*conditions)
                .order_by(stored_files.c.created_at.asc(), stored_files.c.id)
                .limit(limit)
            )
            return [_file(row) for row in result]
