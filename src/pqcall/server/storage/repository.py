"""``Storage``: every query the server makes, behind plain methods and records.

Routes and background tasks never write SQL: they call these methods and get
frozen records back (never ORM objects bound to a session). Each method is one
short transaction. Writes that race with another process are written as one
conditional statement (compare-and-set), so they stay correct with several
server processes on one PostgreSQL: :meth:`Storage.use_challenge` and
:meth:`Storage.update_call_state` are the examples.

Times are unix seconds passed in by the caller (``now``), never read here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    Integer,
    Row,
    String,
    Text,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from pqcall.exceptions import ServerError
from pqcall.server.storage import database
from pqcall.server.storage.models import (
    accounts,
    calls,
    challenges,
    events,
    key_bundles,
    stored_files,
    tokens,
)
from pqcall.signaling.callstate import State

DEFAULT_EVENT_LIMIT = 100
TOUCH_BATCH = 500  # account ids per UPDATE in touch_accounts (SQLite bounds parameters)


class StorageError(ServerError):
    """A storage operation was refused."""


class UsernameTaken(StorageError):
    """The username belongs to another account."""


class CallExists(StorageError):
    """A call with this id already exists."""


class FileLimitReached(StorageError):
    """A new file would take its sender over the quota (bytes) or the file count."""

    def __init__(self, used_bytes: int, files: int) -> None:
        super().__init__(f"the sender has {files} files of {used_bytes} bytes in all")
        self.used_bytes = used_bytes  # bytes of the sender's files not yet deleted
        self.files = files  # how many such files


class ChallengeUse(enum.Enum):
    """What :meth:`Storage.use_challenge` found."""

    OK = "ok"
    """The challenge was valid and is now used."""
    UNKNOWN = "unknown"
    """No such challenge for this username."""
    USED = "used"
    """The challenge was used before."""
    EXPIRED = "expired"
    """The challenge has expired."""


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account."""

    id: int
    """Database id; stable, never reused."""
    username: str
    """Normalized name."""
    identity: bytes
    """Encoded hybrid identity public key."""
    created: float
    """Registration time."""
    last_seen: float | None
    """Last login or push connection; ``None``: never."""


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """An account's current key bundle."""

    bundle: bytes
    """Encoded, verified :class:`~pqcall.crypto.filekey.KeyBundle`."""
    bundle_created: int
    """The bundle's own ``created`` (unix seconds, set by its owner)."""
    received: float
    """When the server stored it."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call row, with its parties' names."""

    call_id: str
    caller_id: int
    callee_id: int
    caller: str
    """Caller's username."""
    callee: str
    """Callee's username."""
    state: State
    reason: str | None
    offer: bytes | None
    answer: bytes | None
    confirm: bytes | None
    caller_candidates: list[dict[str, Any]]
    callee_candidates: list[dict[str, Any]]
    caller_seen_address: str | None
    callee_seen_address: str | None
    created: float
    answered: float | None
    ended: float | None
    ended_by: str | None
    """``caller``, ``callee`` or ``system`` once the call is over."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One pending push event of an account."""

    seq: int
    """Increases across all accounts; the resume token."""
    account_id: int
    type: str
    payload: dict[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One stored (or uploading) file, with its parties' names; never its contents."""

    file_id: str
    sender_id: int
    recipient_id: int
    sender: str
    """Sender's username."""
    recipient: str
    """Recipient's username."""
    size: int
    """Ciphertext bytes the complete file has."""
    blob_path: str
    """Where the ciphertext is, relative to the data directory."""
    state: str
    """``uploading`` or ``stored``."""
    created: float
    expires: float
    """When the file is deleted if nobody deletes it before."""


FILE_UPLOADING = "uploading"
FILE_STORED = "stored"

_UNSET: Any = object()

_caller = aliased(accounts, name="caller")
_callee = aliased(accounts, name="callee")
_CALL_SELECT = (
    select(calls, _caller.c.username.label("caller_name"), _callee.c.username.label("callee_name"))
    .join(_caller, _caller.c.id == calls.c.caller_id)
    .join(_callee, _callee.c.id == calls.c.callee_id)
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


def _account(row: Row[Any]) -> AccountRecord:
    return AccountRecord(
        id=row.id,
        username=row.username,
        identity=row.identity,
        created=row.created_at,
        last_seen=row.last_seen_at,
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


def _call(row: Row[Any]) -> CallRecord:
    return CallRecord(
        call_id=row.id,
        caller_id=row.caller_id,
        callee_id=row.callee_id,
        caller=row.caller_name,
        callee=row.callee_name,
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


class Storage:
    """The server's durable state. One per process; safe to share between tasks.

    Args:
        engine: an engine from :func:`pqcall.server.storage.database.create_engine`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool; disposed by close()

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Storage:
        """Connect to ``url`` and (by default) migrate it to the newest schema.

        Raises:
            ServerError: bad URL, unreachable database, failed migration.
        """
        engine = database.create_engine(url)
        if migrate:
            try:
                await database.migrate(engine)
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(select(1))
        except Exception:
            return False
        return True

    # ------------------------------------------------------------ accounts

    async def create_account(
        self, username: str, identity: bytes, bundle: bytes, bundle_created: int, now: float
    ) -> AccountRecord:
        """Create an account with its first key bundle.

        Raises:
            UsernameTaken: ``username`` exists (with any identity; the caller decides
                whether that is an idempotent repeat).
        """
        try:
            async with self.engine.begin() as connection:
                result = await connection.execute(
                    insert(accounts)
                    .values(username=username, identity=identity, created_at=now)
                    .returning(accounts)
                )
                row = result.one()
                await connection.execute(
                    insert(key_bundles).values(
                        account_id=row.id,
                        bundle=bundle,
                        bundle_created=bundle_created,
                        created_at=now,
                        is_current=True,
                    )
                )
        except IntegrityError:
            raise UsernameTaken(f"username {username!r} is taken") from None
        return _account(row)

    async def get_account(self, account_id: int) -> AccountRecord | None:
        """The account with this id, if any."""
        async with self.engine.connect() as connection:
            result = await connection.execute(select(accounts).where(accounts.c.id == account_id))
            row = result.one_or_none()
        return None if row is None else _account(row)

    async def get_account_by_name(self, username: str) -> AccountRecord | None:
        """The account named ``username`` (normalized), if any."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(accounts).where(accounts.c.username == username)
            )
            row = result.one_or_none()
        return None if row is None else _account(row)

    async def get_accounts_by_names(self, usernames: Iterable[str]) -> list[AccountRecord]:
        """The existing accounts among ``usernames``, ordered by name."""
        names = sorted(set(usernames))
        if not names:
            return []
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(accounts).where(accounts.c.username.in_(names)).order_by(accounts.c.username)
            )
            return [_account(row) for row in result]

    async def touch_last_seen(self, account_id: int, now: float) -> None:
        """Record that the account was seen (login, push connection, heartbeat)."""
        async with self.engine.begin() as connection:
            await connection.execute(
                update(accounts).where(accounts.c.id == account_id).values(last_seen_at=now)
            )

    async def touch_accounts(self, account_ids: Iterable[int], now: float) -> None:
        """:meth:`touch_last_seen` for many accounts at once (the connected phones)."""
        ids = sorted(set(account_ids))
        async with self.engine.begin() as connection:
            for start in range(0, len(ids), TOUCH_BATCH):
                await connection.execute(
                    update(accounts)
                    .where(accounts.c.id.in_(ids[start : start + TOUCH_BATCH]))
                    .values(last_seen_at=now)
                )

    # ------------------------------------------------------------ key bundles

    async def put_bundle(
        self, account_id: int, bundle: bytes, bundle_created: int, now: float
    ) -> None:
        """Make ``bundle`` the account's current key bundle; older ones are kept, not current."""
        async with self.engine.begin() as connection:
            await connection.execute(
                update(key_bundles)
                .where(key_bundles.c.account_id == account_id, key_bundles.c.is_current)
                .values(is_current=False)
            )
            await connection.execute(
                insert(key_bundles).values(
                    account_id=account_id,
                    bundle=bundle,
                    bundle_created=bundle_created,
                    created_at=now,
                    is_current=True,
                )
            )

    async def current_bundle(self, account_id: int) -> BundleRecord | None:
        """The account's current key bundle."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(key_bundles)
                .where(key_bundles.c.account_id == account_id, key_bundles.c.is_current)
                .order_by(key_bundles.c.id.desc())
                .limit(1)
            )
            row = result.one_or_none()
        if row is None:
            return None
        return BundleRecord(row.bundle, row.bundle_created, row.created_at)

    # ------------------------------------------------------------ challenges and tokens

    async def create_challenge(self, username: str, challenge: bytes, expires_at: float) -> None:
        """Store a fresh login challenge for ``username``."""
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(challenges).values(
                    challenge=challenge, username=username, expires_at=expires_at, used=False
                )
            )

    async def use_challenge(self, username: str, challenge: bytes, now: float) -> ChallengeUse:
        """Mark the challenge used, once: a second use, even concurrent, gets ``USED``."""
        # the conditional update is the single point of truth, even across processes
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(challenges)
                .where(
                    challenges.c.challenge == challenge,
                    challenges.c.username == username,
                    challenges.c.used.is_(False),
                    challenges.c.expires_at > now,
                )
                .values(used=True)
            )
            if result.rowcount == 1:
                return ChallengeUse.OK
            found = await connection.execute(
                select(challenges.c.used, challenges.c.expires_at).where(
                    challenges.c.challenge == challenge, challenges.c.username == username
                )
            )
            row = found.one_or_none()
        if row is None:
            return ChallengeUse.UNKNOWN
        if row.used:
            return ChallengeUse.USED
        return ChallengeUse.EXPIRED

    async def create_token(self, token_hash: bytes, account_id: int, expires_at: float) -> None:
        """Store a bearer token by its hash."""
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(tokens).values(
                    token_hash=token_hash, account_id=account_id, expires_at=expires_at
                )
            )

    async def account_for_token(self, token_hash: bytes) -> tuple[AccountRecord, float] | None:
        """The account a token hash belongs to, and the token's expiry; expired ones too."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(accounts, tokens.c.expires_at)
                .join(tokens, tokens.c.account_id == accounts.c.id)
                .where(tokens.c.token_hash == token_hash)
            )
            row = result.one_or_none()
        return None if row is None else (_account(row), row.expires_at)

    async def delete_token(self, token_hash: bytes) -> bool:
        """Revoke a token; whether it existed."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(tokens).where(tokens.c.token_hash == token_hash)
            )
        return bool(result.rowcount)

    async def purge_expired(self, now: float) -> int:
        """Delete expired tokens and challenges; how many rows went."""
        async with self.engine.begin() as connection:
            gone = await connection.execute(delete(tokens).where(tokens.c.expires_at <= now))
            used = await connection.execute(
                delete(challenges).where(challenges.c.expires_at <= now)
            )
        return int(gone.rowcount) + int(used.rowcount)

    # ------------------------------------------------------------ calls

    async def create_call(
        self,
        call_id: str,
        caller_id: int,
        callee_id: int,
        offer: bytes,
        caller_candidates: Sequence[dict[str, Any]],
        caller_seen_address: str | None,
        now: float,
    ) -> CallRecord:
        """Insert a ringing call.

        Raises:
            CallExists: ``call_id`` is in use (by any call, ever).
        """
        try:
            async with self.engine.begin() as connection:
                await connection.execute(
                    insert(calls).values(
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
                )
        except IntegrityError:
            raise CallExists(f"call {call_id} exists") from None
        call = await self.get_call(call_id)
        assert call is not None
        return call

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call with this id, if any."""
        async with self.engine.connect() as connection:
            result = await connection.execute(_CALL_SELECT.where(calls.c.id == call_id))
            row = result.one_or_none()
        return None if row is None else _call(row)

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
    ) -> CallRecord | None:
        """Move a call from ``expected_state`` to ``new_state``, setting the given columns.

        A compare-and-set: nothing changes, and ``None`` comes back, when the
        call is no longer in ``expected_state`` (another request or process got
        there first) or does not exist. Columns left out are not touched.
        Decide ``new_state`` with :func:`pqcall.signaling.callstate.outcome`.
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
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(calls)
                .where(calls.c.id == call_id, calls.c.state == expected_state.value)
                .values(**values)
            )
            if result.rowcount != 1:
                return None
            row = (await connection.execute(_CALL_SELECT.where(calls.c.id == call_id))).one()
        return _call(row)

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

    async def list_call_partners(self, account_id: int, limit: int = 1000) -> list[int]:
        """Ids of the accounts ``account_id`` has had a call with, either way (its contacts)."""
        partner = case(
            (calls.c.caller_id == account_id, calls.c.callee_id), else_=calls.c.caller_id
        ).label("partner")
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(partner)
                .where((calls.c.caller_id == account_id) | (calls.c.callee_id == account_id))
                .distinct()
                .order_by(partner)
                .limit(limit)
            )
            return [int(row.partner) for row in result]

    async def _calls(
        self, conditions: Iterable[Any], order: Any, limit: int = 1000
    ) -> list[CallRecord]:
        async with self.engine.connect() as connection:
            result = await connection.execute(
                _CALL_SELECT.where(*conditions).order_by(order, calls.c.id).limit(limit)
            )
            return [_call(row) for row in result]

    # ------------------------------------------------------------ events

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

    async def count_calls_by_state(self) -> dict[State, int]:
        """How many calls are in each state (for metrics)."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(calls.c.state, func.count()).group_by(calls.c.state)
            )
            counts = {State(state): int(n) for state, n in result}
        return {state: counts.get(state, 0) for state in State}

    # ------------------------------------------------------------ stored files

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

    async def complete_file(self, file_id: str, expires_at: float) -> FileRecord | None:
        """Mark an uploading file stored, with a new expiry; ``None`` if it is not uploading."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(stored_files)
                .where(stored_files.c.id == file_id, stored_files.c.state == FILE_UPLOADING)
                .values(state=FILE_STORED, expires_at=expires_at)
            )
            if result.rowcount != 1:
                return None
            row = (await connection.execute(_FILE_SELECT.where(stored_files.c.id == file_id))).one()
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

    async def _files(self, conditions: Iterable[Any], limit: int) -> list[FileRecord]:
        async with self.engine.connect() as connection:
            result = await connection.execute(
                _FILE_SELECT.where(*conditions)
                .order_by(stored_files.c.created_at.asc(), stored_files.c.id)
                .limit(limit)
            )
            return [_file(row) for row in result]
