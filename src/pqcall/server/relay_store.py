"""Relay allocations in the server's database, where a restarted relay finds them.

The ``relay_allocations`` table (migration 0003) holds one row per relayed call: the
:class:`~pqcall.server.relay_store_types.StoredAllocation` that
:meth:`RelayTable.snapshot <pqcall.server.relay_table.RelayTable.snapshot>` makes. The
in-server relay writes a row when it allocates, when a party binds or moves, and
deletes it when the allocation ends; at start it restores every live row. A separate
``pqcall relay`` process (:mod:`pqcall.cli.relay`) on the same database finds the
rows the server wrote (:meth:`RelayStore.find_grant` when a bind names a grant it
does not hold) and drops the ones the server deleted (:meth:`RelayStore.live_calls`).

Contract: every method is one short transaction; a failure raises the driver's or
SQLAlchemy's exception (the relay logs one line and goes on relaying what it holds).
Bind keys are never logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from pqcall.server.relay_store_types import Address, StoredAllocation, StoredParty
from pqcall.server.storage.database import create_engine, migrate
from pqcall.server.storage.models import relay_allocations

_T = relay_allocations.c
CHUNK = 500  # call ids per IN (...) query


def _address_text(address: Address | None) -> str | None:
    return None if address is None else json.dumps(list(address))


def _address(text: str | None) -> Address | None:
    return None if text is None else tuple(json.loads(text))


def _row_values(stored: StoredAllocation) -> dict[str, object]:
    values: dict[str, object] = {"call_id": stored.call_id, "expires_at": stored.expires_at}
    for name, party in (("caller", stored.caller), ("callee", stored.callee)):
        values[f"{name}_grant"] = party.grant_id
        values[f"{name}_key"] = party.key
        values[f"{name}_address"] = _address_text(party.address)
        values[f"{name}_counter"] = party.counter
    return values


def _stored(row: Row[tuple[object, ...]]) -> StoredAllocation:
    m = row._mapping
    parties = [
        StoredParty(
            bytes(m[f"{name}_grant"]),
            bytes(m[f"{name}_key"]),
            _address(m[f"{name}_address"]),
            int(m[f"{name}_counter"]),
        )
        for name in ("caller", "callee")
    ]
    return StoredAllocation(str(m["call_id"]), parties[0], parties[1], float(m["expires_at"]))


class RelayStore:
    """The ``relay_allocations`` table of one database.

    Args:
        engine: an engine from :func:`pqcall.server.storage.database.create_engine`.
        owns_engine: dispose of it at :meth:`close`.
    """

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine  # the database
        self._owns_engine = owns_engine  # close() disposes of it

    @classmethod
    async def open(cls, url: str) -> RelayStore:
        """A store on its own engine for ``url``, migrated to the newest schema.

        Raises:
            ServerError: the URL is invalid, or the database cannot be reached or migrated.
        """
        engine = create_engine(url)
        try:
            await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, owns_engine=True)

    async def close(self) -> None:
        """Release the engine (if this store made it)."""
        if self._owns_engine:
            await self._engine.dispose()

    async def put(self, stored: StoredAllocation) -> None:
        """Write ``stored``, replacing the call's row if there is one."""
        async with self._engine.begin() as connection:
            await connection.execute(delete(relay_allocations).where(_T.call_id == stored.call_id))
            await connection.execute(insert(relay_allocations).values(**_row_values(stored)))

    async def delete(self, call_ids: Iterable[str]) -> None:
        """Delete these calls' rows (missing ones are fine)."""
        ids = list(call_ids)
        if not ids:
            return
        async with self._engine.begin() as connection:
            await connection.execute(delete(relay_allocations).where(_T.call_id.in_(ids)))

    async def load_live(self, wall_now: float) -> list[StoredAllocation]:
        """Every allocation not expired at ``wall_now``; expired rows are deleted."""
        async with self._engine.begin() as connection:
            await connection.execute(delete(relay_allocations).where(_T.expires_at <= wall_now))
            result = await connection.execute(select(relay_allocations))
            return [_stored(row) for row in result]

    async def find_grant(self, grant_id: bytes, wall_now: float) -> StoredAllocation | None:
        """The live allocation with a party of ``grant_id``, if there is one."""
        query = select(relay_allocations).where(
            or_(_T.caller_grant == grant_id, _T.callee_grant == grant_id),
            _T.expires_at > wall_now,
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _stored(row)

    async def live_calls(self, call_ids: Iterable[str]) -> set[str]:
        """Which of ``call_ids`` still have a row (asked :data:`CHUNK` at a time)."""
        ids = list(call_ids)
        live: set[str] = set()
        async with self._engine.connect() as connection:
            for start in range(0, len(ids), CHUNK):
                query = select(_T.call_id).where(_T.call_id.in_(ids[start : start + CHUNK]))
                live.update(str(call_id) for call_id in (await connection.execute(query)).scalars())
        return live
