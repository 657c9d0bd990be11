"""Accounts and their key bundles: :class:`AccountStore`.

An account is a normalized username bound to a hybrid identity key, created
with its first key bundle; a new bundle replaces the current one (older ones
are kept, not current). Each method is one short transaction; times are unix
seconds passed in by the caller.

:meth:`AccountStore.find_account_by_name` answers from a cache (a name's
account and identity change only by recovery or an operator's release, issue
22: this process drops the entry at once, another process's change is seen
within :data:`NAME_CACHE_TTL_S`; an entry is also dropped when the account's
key bundle changes); its ``last_seen`` may be stale, so presence reads
:meth:`AccountStore.get_account`.

Every account has at least one device (``pqcall.server.storage.device_store``):
:meth:`AccountStore.create_account` makes its first, whose key is its identity.
Account reads select :data:`ACCOUNT_COLUMNS` only, never the device list blob.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pqcall.server.storage.models import accounts, devices, key_bundles
from pqcall.server.storage.records import AccountRecord, BundleRecord, UsernameTaken

NAME_CACHE_SIZE = 100_000  # accounts kept by find_account_by_name
NAME_CACHE_TTL_S = 10.0  # how long another process's recovery or release may go unseen here
DEVICE_ID_LENGTH = 16
FIRST_DEVICE_NAME = "first device"  # the device an account's identity is, until it lists others
ACCOUNT_COLUMNS = (
    accounts.c.id,
    accounts.c.username,
    accounts.c.identity,
    accounts.c.created_at,
    accounts.c.last_seen_at,
)
TOUCH_BATCH = 500  # account ids per UPDATE in touch_accounts (SQLite bounds parameters)


def device_id_of(public_key: bytes) -> bytes:
    """The id of a device key: the first 16 bytes of SHA-256 of its encoding (issue 22)."""
    return hashlib.sha256(public_key).digest()[:DEVICE_ID_LENGTH]


def account_from_row(row: Any) -> AccountRecord:
    """The record of a row of ``accounts`` (or of a select that includes its columns)."""
    return AccountRecord(
        id=row.id,
        username=row.username,
        identity=row.identity,
        created=row.created_at,
        last_seen=row.last_seen_at,
    )


class AccountStore:
    """Accounts and key bundles. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage
        # find_account_by_name: name -> (account, when cached, monotonic)
        self._by_name: OrderedDict[str, tuple[AccountRecord, float]] = OrderedDict()

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
                    .returning(*ACCOUNT_COLUMNS)
                )
                row = result.one()
                await connection.execute(
                    insert(devices).values(
                        account_id=row.id,
                        device_id=device_id_of(identity),
                        name=FIRST_DEVICE_NAME,
                        public_key=identity,
                        added_at=now,
                    )
                )
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
        return account_from_row(row)

    async def get_account(self, account_id: int) -> AccountRecord | None:
        """The account with this id, if any."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(*ACCOUNT_COLUMNS).where(accounts.c.id == account_id)
            )
            row = result.one_or_none()
        return None if row is None else account_from_row(row)

    async def get_account_by_name(self, username: str) -> AccountRecord | None:
        """The account named ``username`` (normalized), if any."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(*ACCOUNT_COLUMNS).where(accounts.c.username == username)
            )
            row = result.one_or_none()
        return None if row is None else account_from_row(row)

    async def find_account_by_name(self, username: str) -> AccountRecord | None:
        """:meth:`get_account_by_name` through a cache (``last_seen`` may be stale).

        Unknown names are not cached: one registered a moment later is found.
        """
        cached = self._by_name.get(username)
        if cached is not None and time.monotonic() - cached[1] <= NAME_CACHE_TTL_S:
            self._by_name.move_to_end(username)
            return cached[0]
        account = await self.get_account_by_name(username)
        self._by_name.pop(username, None)
        if account is not None:
            self._by_name[username] = (account, time.monotonic())
            while len(self._by_name) > NAME_CACHE_SIZE:
                self._by_name.popitem(last=False)
        return account

    def forget_cached(self, account_id: int) -> None:
        """Drop the account from the name cache (its keys changed)."""
        for name in [n for n, (account, _) in self._by_name.items() if account.id == account_id]:
            del self._by_name[name]

    async def get_accounts_by_names(self, usernames: Iterable[str]) -> list[AccountRecord]:
        """The existing accounts among ``usernames``, ordered by name."""
        names = sorted(set(usernames))
        if not names:
            return []
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(*ACCOUNT_COLUMNS)
                .where(accounts.c.username.in_(names))
                .order_by(accounts.c.username)
            )
            return [account_from_row(row) for row in result]

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
        self.forget_cached(account_id)
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
