"""Pending push events of each account: :class:`EventStore`.

An event is stored before it is pushed; its ``seq`` increases across all
accounts and is the phone's resume token. Acknowledged events are deleted;
retention limits bound what an absent phone leaves behind. Times are unix
seconds passed in by the caller.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pqcall.server.storage.models import events
from pqcall.server.storage.records import EventRecord

DEFAULT_EVENT_LIMIT = 100


class EventStore:
    """Events. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage

    async def add_event(
        self, account_id: int, type: str, payload: dict[str, Any], now: float
    ) -> int:
        """Queue an event for ``account_id``; returns its ``seq`` (the resume token)."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                insert(events)
                .values(account_id=account_id, type=type, payload=payload, created_at=now)
                .returning(events.c.seq)
            )
            return int(result.scalar_one())

    async def events_after(
        self, account_id: int, seq: int, limit: int = DEFAULT_EVENT_LIMIT
    ) -> list[EventRecord]:
        """The account's events with ``seq`` greater than ``seq``, oldest first."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(events)
                .where(events.c.account_id == account_id, events.c.seq > seq)
                .order_by(events.c.seq)
                .limit(limit)
            )
            return [
                EventRecord(row.seq, row.account_id, row.type, dict(row.payload), row.created_at)
                for row in result
            ]

    async def delete_events_through(self, account_id: int, seq: int) -> int:
        """Forget the account's events up to and including ``seq`` (acknowledged)."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(events).where(events.c.account_id == account_id, events.c.seq <= seq)
            )
        return int(result.rowcount)

    async def delete_events_before(self, created_before: float) -> int:
        """Forget events older than a time, for every account (retention)."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(events).where(events.c.created_at < created_before)
            )
        return int(result.rowcount)

    async def trim_events(self, keep_per_account: int) -> int:
        """Forget all but the newest ``keep_per_account`` (at least 1) events of every account."""
        if keep_per_account < 1:
            raise ValueError("keep at least one event per account")
        deleted = 0
        async with self.engine.begin() as connection:
            crowded = await connection.execute(
                select(events.c.account_id)
                .group_by(events.c.account_id)
                .having(func.count() > keep_per_account)
            )
            for (account_id,) in crowded.all():
                oldest_kept = (
                    select(events.c.seq)
                    .where(events.c.account_id == account_id)
                    .order_by(events.c.seq.desc())
                    .offset(keep_per_account - 1)
                    .limit(1)
                    .scalar_subquery()
                )
                result = await connection.execute(
                    delete(events).where(
                        events.c.account_id == account_id, events.c.seq < oldest_kept
                    )
                )
                deleted += int(result.rowcount)
        return deleted
