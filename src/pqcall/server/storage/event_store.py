"""Pending push events of each account: :class:`EventStore`.

An event is stored before it is pushed; its ``seq`` increases across all
accounts and is the phone's resume token. Acknowledged events are deleted by
exact seq (:meth:`EventStore.delete_events`): an ack never removes an event
the phone was not sent, even one with a lower seq that committed later (another
transaction or process). Retention limits bound what an absent phone leaves
behind. Times are unix seconds passed in by the caller.

:meth:`EventStore.add_events` writes in the caller's transaction, so a call's
new state and the events that announce it commit together, in one statement
for all of them.

Order across processes: on PostgreSQL, :meth:`EventStore.add_events` first
takes (in the same statement as the insert, where it can) a transaction-scoped
advisory lock per account (in id order, so two
transactions cannot deadlock): one account's events get their seqs and commit
one transaction at a time, so a phone that has seen seq n will never see an
event of its own with a smaller seq commit later (the ordering bug of issue
18, with several server processes on one database). SQLite has one writer at
a time and one server process (its lock file), so it needs nothing.

Acks are per device (issue 22): :meth:`EventStore.acknowledge` deletes an
acknowledged event of an account with one device at once, as above; for an
account with several devices it records which device has it (``event_acks``)
and deletes the event once every device in the account's list has it, so one
device's ack never takes an event from another that has not seen it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import LargeBinary, delete, func, insert, literal, or_, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pqcall.server.storage.models import devices, event_acks, events
from pqcall.server.storage.records import EventRecord

DEFAULT_EVENT_LIMIT = 100
ORDER_LOCK_SPACE = 0x7071  # first key of the per-account advisory locks ("pq")
ACCOUNT_ORDER_LOCK = text(
    "SELECT pg_advisory_xact_lock(:space, id)"
    " FROM (SELECT unnest(CAST(:ids AS integer[])) AS id ORDER BY 1) AS ordered"
).bindparams(space=ORDER_LOCK_SPACE)
DELETE_BATCH = 400  # (account, seq) pairs per DELETE (SQLite bounds parameters)
NO_DEVICE = bytes(16)  # the device of a token older than devices: its acks count for no device


class EventStore:
    """Events. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage
        self.order_lock = True  # PostgreSQL: per-account lock so seq order is commit order

    async def add_event(
        self, account_id: int, type: str, payload: dict[str, Any], now: float
    ) -> int:
        """Queue an event for ``account_id``; returns its ``seq`` (the resume token)."""
        async with self.engine.begin() as connection:
            (seq,) = await self.add_events(connection, [(account_id, type, payload)], now)
            return seq

    async def add_events(
        self,
        connection: AsyncConnection,
        new: Sequence[tuple[int, str, dict[str, Any]]],
        now: float,
    ) -> list[int]:
        """Queue ``(account_id, type, payload)`` events in ``connection``'s transaction.

        One statement when no account appears twice (a multi-row ``INSERT ...
        RETURNING``, whose rows are told apart by account); else one per event,
        in the order given. Their seqs, in the order given.
        """
        if not new:
            return []
        locked = self.order_lock and connection.dialect.name == "postgresql"
        accounts = [account for account, _, _ in new]
        if locked and len(set(accounts)) == len(accounts):
            return await self._add_locked(connection, new, now)
        if locked:
            await connection.execute(ACCOUNT_ORDER_LOCK, {"ids": sorted(set(accounts))})
        rows = [
            {"account_id": account, "type": kind, "payload": payload, "created_at": now}
            for account, kind, payload in new
        ]
        if len(set(accounts)) < len(accounts):
            seqs = []
            for row in rows:
                result = await connection.execute(
                    insert(events).values(**row).returning(events.c.seq)
                )
                seqs.append(int(result.scalar_one()))
            return seqs
        result = await connection.execute(
            insert(events).values(rows).returning(events.c.account_id, events.c.seq)
        )
        seq_of = {int(row.account_id): int(row.seq) for row in result}
        return [seq_of[account] for account in accounts]

    async def _add_locked(
        self,
        connection: AsyncConnection,
        new: Sequence[tuple[int, str, dict[str, Any]]],
        now: float,
    ) -> list[int]:
        """PostgreSQL, distinct accounts: the order locks and the insert in one statement.

        The rows to insert are joined with the (one-row) count of the locks
        taken, so every lock is held before the first row takes its seq.
        """
        params: dict[str, Any] = {"ids": sorted(account for account, _, _ in new)}
        rows = []
        for i, (account, kind, payload) in enumerate(new):
            params.update({f"a{i}": account, f"t{i}": kind, f"p{i}": json.dumps(payload)})
            rows.append(f"(CAST(:a{i} AS integer), CAST(:t{i} AS varchar), CAST(:p{i} AS json))")
        statement = text(
            "WITH locked AS (SELECT pg_advisory_xact_lock(:space, id) FROM"
            " (SELECT unnest(CAST(:ids AS integer[])) AS id ORDER BY 1) AS ordered)"
            " INSERT INTO events (account_id, type, payload, created_at)"
            " SELECT v.account_id, v.type, v.payload, CAST(:now AS double precision)"
            f" FROM (VALUES {', '.join(rows)}) AS v(account_id, type, payload),"
            " (SELECT count(*) FROM locked) AS held"
            " RETURNING account_id, seq"
        )
        result = await connection.execute(
            statement, {**params, "space": ORDER_LOCK_SPACE, "now": now}
        )
        seq_of = {int(row.account_id): int(row.seq) for row in result}
        return [seq_of[account] for account, _, _ in new]

    async def delete_events(
        self,
        acknowledged: Iterable[tuple[int, int]],
        through: Mapping[int, int] | None = None,
        *,
        only: Any = None,
    ) -> int:
        """Forget exactly these ``(account_id, seq)`` events (acknowledged); how many went.

        ``through`` maps an account to a seq the phone resumed from: its events
        up to that seq go too (the phone said it had them; a resume never sends them).
        ``only``: a further condition every deleted row must meet.
        """
        pairs = sorted(set(acknowledged))
        resumed = sorted((through or {}).items())
        if not pairs and not resumed:
            return 0
        deleted = 0
        async with self.engine.begin() as connection:
            for start in range(0, max(len(pairs), len(resumed)), DELETE_BATCH):
                batch = pairs[start : start + DELETE_BATCH]
                conditions: list[Any] = [
                    (events.c.account_id == account) & (events.c.seq <= seq)
                    for account, seq in resumed[start : start + DELETE_BATCH]
                ]
                if len(batch) == 1:
                    # not ``IN (VALUES (a, s))``: SQLite 3.40 finds no row for a one-row
                    # VALUES when a != s (the index on (account_id, seq), seq the rowid)
                    [(account, seq)] = batch
                    conditions.append((events.c.account_id == account) & (events.c.seq == seq))
                elif batch:
                    conditions.append(tuple_(events.c.account_id, events.c.seq).in_(batch))
                where = or_(*conditions) if only is None else or_(*conditions) & only
                result = await connection.execute(delete(events).where(where))
                deleted += int(result.rowcount)
        return deleted

    async def acknowledge(
        self,
        acks: Iterable[tuple[int, bytes | None, int]],
        through: Mapping[tuple[int, bytes | None], int] | None = None,
    ) -> int:
        """Per-device acks: ``(account, device, seq)``, and ``(account, device) -> seq`` resumed.

        An account with at most one device loses its acknowledged events at once
        (:meth:`delete_events`); an account with several records each device's
        acks and loses an event when every device of its list has it. How many
        events went.
        """
        acks = set(acks)
        resumed = dict(through or {})
        pairs = sorted({(account, seq) for account, _, seq in acks})
        single_through: dict[int, int] = {}
        for (account, _), seq in resumed.items():
            single_through[account] = max(seq, single_through.get(account, 0))
        # one statement does every account of one device (the common case)
        one_device = (
            select(func.count())
            .select_from(devices)
            .where(devices.c.account_id == events.c.account_id)
            .scalar_subquery()
        ) <= 1
        deleted = await self.delete_events(pairs, single_through, only=one_device)
        if deleted == len(pairs) and not resumed:
            return deleted  # every ack was a single device's: nothing is shared
        accounts = {account for account, _ in pairs} | set(single_through)
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(devices.c.account_id, func.count())
                .where(devices.c.account_id.in_(sorted(accounts)))
                .group_by(devices.c.account_id)
            )
            shared = {int(account) for account, count in result if count > 1}
        if shared:
            deleted += await self._acknowledge_shared(shared, acks, resumed)
        return deleted

    async def _acknowledge_shared(
        self,
        shared: set[int],
        acks: set[tuple[int, bytes | None, int]],
        resumed: dict[tuple[int, bytes | None], int],
    ) -> int:
        """Record the devices' acks of accounts with several devices; delete what all have."""
        exact: dict[tuple[int, bytes], list[int]] = {}
        for account, device, seq in acks:
            if account in shared:
                exact.setdefault((account, device or NO_DEVICE), []).append(seq)
        async with self.engine.begin() as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            for (account, device), seqs in sorted(exact.items()):
                for start in range(0, len(seqs), DELETE_BATCH):
                    batch = sorted(seqs)[start : start + DELETE_BATCH]
                    await connection.execute(
                        _record_acks(dialect, account, device, events.c.seq.in_(batch))
                    )
            for (account, device), seq in sorted(resumed.items(), key=lambda item: item[1]):
                if account in shared:
                    await connection.execute(
                        _record_acks(dialect, account, device or NO_DEVICE, events.c.seq <= seq)
                    )
            return await delete_fully_acknowledged(connection, shared)

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


def _record_acks(dialect: Any, account: int, device: bytes, condition: Any) -> Any:
    """``INSERT INTO event_acks`` the account's events matching ``condition`` for ``device``.

    Already recorded pairs are skipped (``ON CONFLICT DO NOTHING``: two
    connections of one device may ack the same event at once).
    """
    rows = select(events.c.seq, literal(device, LargeBinary)).where(
        events.c.account_id == account, condition
    )
    return (
        dialect.insert(event_acks)
        .from_select([event_acks.c.seq, event_acks.c.device_id], rows)
        .on_conflict_do_nothing()
    )


async def delete_fully_acknowledged(connection: AsyncConnection, account_ids: Iterable[int]) -> int:
    """Delete these accounts' events that every device in their lists has acknowledged.

    Also run when a device leaves a list (``device_store``): what the others had
    all acknowledged was kept only for it.
    """
    acked = (
        select(func.count())
        .select_from(event_acks.join(devices, devices.c.device_id == event_acks.c.device_id))
        .where(event_acks.c.seq == events.c.seq, devices.c.account_id == events.c.account_id)
        .scalar_subquery()
    )
    needed = (
        select(func.count())
        .select_from(devices)
        .where(devices.c.account_id == events.c.account_id)
        .scalar_subquery()
    )
    result = await connection.execute(
        delete(events).where(events.c.account_id.in_(sorted(set(account_ids))), acked >= needed)
    )
    return int(result.rowcount)
