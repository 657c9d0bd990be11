"""Call rows and their state: :class:`CallStore`.

A call is a row with a state (:class:`~pqcall.signaling.callstate.State`),
its handshake messages, candidates and timestamps, so a restart loses
nothing. State changes are compare-and-set (:meth:`CallStore.update_call_state`),
so they stay correct with several server processes on one PostgreSQL.
Times are unix seconds passed in by the caller.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from pqcall.server.storage.models import accounts, calls
from pqcall.server.storage.records import CallExists, CallRecord
from pqcall.signaling.callstate import State

_UNSET: Any = object()
NAME_CACHE_SIZE = 100_000  # account id -> username, for rows an UPDATE ... RETURNING gives
CALL_CACHE_SIZE = 4096  # calls this process wrote or read last (recent_call)

_caller = aliased(accounts, name="caller")
_callee = aliased(accounts, name="callee")
_CALL_SELECT = (
    select(calls, _caller.c.username.label("caller_name"), _callee.c.username.label("callee_name"))
    .join(_caller, _caller.c.id == calls.c.caller_id)
    .join(_callee, _callee.c.id == calls.c.callee_id)
)


def _call(row: Row[Any], caller: str | None = None, callee: str | None = None) -> CallRecord:
    return CallRecord(
        call_id=row.id,
        caller_id=row.caller_id,
        callee_id=row.callee_id,
        caller=row.caller_name if caller is None else caller,
        callee=row.callee_name if callee is None else callee,
        state=State(row.state),
        reason=row.reason,
        offer=row.offer,
        answer=row.answer,
        confirm=row.confirm,
        caller_candidates=list(row.caller_candidates),
        callee_candidates=list(row.callee_candidates),
        caller_seen_address=row.caller_seen_address,
        callee_seen_address=row.callee_seen_address,
        created=row.created_at,
        answered=row.answered_at,
        ended=row.ended_at,
        ended_by=row.ended_by,
    )


class CallStore:
    """Calls. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage
        self._names: OrderedDict[int, str] = OrderedDict()  # usernames never change
        self._recent: OrderedDict[str, CallRecord] = OrderedDict()  # call id -> as last seen

    @contextlib.asynccontextmanager
    async def _begin(self, connection: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        """``connection`` (the caller's transaction) or a transaction of our own."""
        if connection is not None:
            yield connection
            return
        async with self.engine.begin() as own:
            yield own

    def _remember(self, call: CallRecord) -> CallRecord:
        for account_id, name in ((call.caller_id, call.caller), (call.callee_id, call.callee)):
            self._names[account_id] = name
            self._names.move_to_end(account_id)
        while len(self._names) > NAME_CACHE_SIZE:
            self._names.popitem(last=False)
        self._recent[call.call_id] = call
        self._recent.move_to_end(call.call_id)
        while len(self._recent) > CALL_CACHE_SIZE:
            self._recent.popitem(last=False)
        return call

    def recent_call(self, call_id: str) -> CallRecord | None:
        """The call as this process last wrote or read it, without asking the database.

        Its parties and id are right (they never change); its state may be
        behind (another process, or a transaction that rolled back): use it
        only as ``expected_state`` of :meth:`update_call_state`, whose
        compare-and-set fails on a stale state, and then read the call anew.
        """
        call = self._recent.get(call_id)
        if call is not None:
            self._recent.move_to_end(call_id)
        return call

    async def create_call(
        self,
        call_id: str,
        caller_id: int,
        callee_id: int,
        offer: bytes,
        caller_candidates: Sequence[dict[str, Any]],
        caller_seen_address: str | None,
        now: float,
        *,
        names: tuple[str, str] | None = None,
        connection: AsyncConnection | None = None,
    ) -> CallRecord:
        """Insert a ringing call.

        Args:
            names: the caller's and callee's usernames, if the caller knows them
                (else they are read back).
            connection: the caller's transaction, if any (else one of its own).

        Raises:
            CallExists: ``call_id`` is in use (by any call, ever).
        """
        try:
            # with the caller's connection, a duplicate id fails its whole transaction
            async with self._begin(connection) as transaction:
                result = await transaction.execute(
                    insert(calls)
                    .values(
                        id=call_id,
                        caller_id=caller_id,
                        callee_id=callee_id,
                        state=State.RINGING.value,
                        offer=offer,
                        caller_candidates=list(caller_candidates),
                        callee_candidates=[],
                        caller_seen_address=caller_seen_address,
                        created_at=now,
                    )
                    .returning(calls)
                )
                row = result.one()
        except IntegrityError:
            raise CallExists(f"call {call_id} exists") from None
        if names is None:
            call = await self.get_call(call_id, connection=connection)
            assert call is not None
            return call
        return self._remember(_call(row, *names))

    async def get_call(
        self, call_id: str, *, connection: AsyncConnection | None = None
    ) -> CallRecord | None:
        """The call with this id, if any (in ``connection``'s transaction, if given)."""
        if connection is not None:
            result = await connection.execute(_CALL_SELECT.where(calls.c.id == call_id))
            row = result.one_or_none()
        else:
            async with self.engine.connect() as own:
                result = await own.execute(_CALL_SELECT.where(calls.c.id == call_id))
                row = result.one_or_none()
        return None if row is None else self._remember(_call(row))

    async def update_call_state(
        self,
        call_id: str,
        *,
        expected_state: State,
        new_state: State,
        reason: str | None = _UNSET,
        ended_by: str | None = _UNSET,
        answer: bytes | None = _UNSET,
        confirm: bytes | None = _UNSET,
        callee_candidates: Sequence[dict[str, Any]] = _UNSET,
        callee_seen_address: str | None = _UNSET,
        answered_at: float | None = _UNSET,
        ended_at: float | None = _UNSET,
        connection: AsyncConnection | None = None,
    ) -> CallRecord | None:
        """Move a call from ``expected_state`` to ``new_state``, setting the given columns.

        A compare-and-set: nothing changes, and ``None`` comes back, when the
        call is no longer in ``expected_state`` (another request or process got
        there first) or does not exist. Columns left out are not touched.
        Decide ``new_state`` with :func:`pqcall.signaling.callstate.outcome`.
        One statement (``UPDATE ... RETURNING``) when the parties' names are
        cached, as they are for a call this process created or read.
        """
        optional: dict[str, Any] = {
            "reason": reason,
            "ended_by": ended_by,
            "answer": answer,
            "confirm": confirm,
            "callee_candidates": _UNSET if callee_candidates is _UNSET else list(callee_candidates),
            "callee_seen_address": callee_seen_address,
            "answered_at": answered_at,
            "ended_at": ended_at,
        }
        values = {column: value for column, value in optional.items() if value is not _UNSET}
        values["state"] = new_state.value
        async with self._begin(connection) as transaction:
            result = await transaction.execute(
                update(calls)
                .where(calls.c.id == call_id, calls.c.state == expected_state.value)
                .values(**values)
                .returning(calls)
            )
            row = result.one_or_none()
            if row is None:
                return None
            caller, callee = self._names.get(row.caller_id), self._names.get(row.callee_id)
            if caller is None or callee is None:
                row = (await transaction.execute(_CALL_SELECT.where(calls.c.id == call_id))).one()
                return self._remember(_call(row))
        return self._remember(_call(row, caller, callee))

    async def list_pending_calls_for(self, account_id: int) -> list[CallRecord]:
        """Calls ringing for ``account_id`` as callee, oldest first."""
        return await self._calls(
            (calls.c.callee_id == account_id, calls.c.state == State.RINGING.value),
            calls.c.created_at.asc(),
        )

    async def list_calls_in_state(
        self, state: State, *, created_before: float | None = None, limit: int = 1000
    ) -> list[CallRecord]:
        """Calls in ``state`` (optionally created before a time), oldest first: for sweepers."""
        conditions: list[Any] = [calls.c.state == state.value]
        if created_before is not None:
            conditions.append(calls.c.created_at < created_before)
        return await self._calls(conditions, calls.c.created_at.asc(), limit)

    async def list_calls_for(
        self, account_id: int, *, states: Iterable[State] | None = None, limit: int = 100
    ) -> list[CallRecord]:
        """Calls where ``account_id`` is a party (call history), newest first."""
        conditions: list[Any] = [
            (calls.c.caller_id == account_id) | (calls.c.callee_id == account_id)
        ]
        if states is not None:
            conditions.append(calls.c.state.in_([s.value for s in states]))
        return await self._calls(conditions, calls.c.created_at.desc(), limit)

    async def list_vanished_calls(self, seen_before: float, limit: int = 1000) -> list[CallRecord]:
        """Active calls answered before ``seen_before`` whose parties were both last seen before it.

        The candidates for "both parties vanished"; the caller still checks who
        is connected right now.
        """
        conditions = (
            calls.c.state == State.ACTIVE.value,
            func.coalesce(calls.c.answered_at, calls.c.created_at) < seen_before,
            func.coalesce(_caller.c.last_seen_at, 0.0) < seen_before,
            func.coalesce(_callee.c.last_seen_at, 0.0) < seen_before,
        )
        return await self._calls(conditions, calls.c.created_at.asc(), limit)

    async def list_presence_watchers(self, account_id: int, limit: int = 1000) -> list[int]:
        """Ids of the accounts ``account_id`` lets see its presence (docs/server.md#presence).

        Those it has called (answered or not), and those whose call it answered.
        """
        called = select(calls.c.callee_id.label("watcher")).where(calls.c.caller_id == account_id)
        answered = select(calls.c.caller_id.label("watcher")).where(
            calls.c.callee_id == account_id, calls.c.answered_at.is_not(None)
        )
        union = called.union(answered).subquery()
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(union.c.watcher).order_by(union.c.watcher).limit(limit)
            )
            return [int(row.watcher) for row in result]

    async def presence_granted(self, asker_id: int, target_ids: Iterable[int]) -> set[int]:
        """Which of ``target_ids`` let ``asker_id`` see their presence.

        A target has called the asker, or answered a call from the asker.
        """
        targets = list(target_ids)
        if not targets:
            return set()
        called = select(calls.c.caller_id.label("target")).where(
            calls.c.callee_id == asker_id, calls.c.caller_id.in_(targets)
        )
        answered = select(calls.c.callee_id.label("target")).where(
            calls.c.caller_id == asker_id,
            calls.c.callee_id.in_(targets),
            calls.c.answered_at.is_not(None),
        )
        async with self.engine.connect() as connection:
            result = await connection.execute(called.union(answered))
            return {int(row.target) for row in result}

    async def _calls(
        self, conditions: Iterable[Any], order: Any, limit: int = 1000
    ) -> list[CallRecord]:
        async with self.engine.connect() as connection:
            result = await connection.execute(
                _CALL_SELECT.where(*conditions).order_by(order, calls.c.id).limit(limit)
            )
            return [_call(row) for row in result]

    async def count_calls_by_state(self) -> dict[State, int]:
        """How many calls are in each state (for metrics)."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(calls.c.state, func.count()).group_by(calls.c.state)
            )
            counts = {State(state): int(n) for state, n in result}
        return {state: counts.get(state, 0) for state in State}
