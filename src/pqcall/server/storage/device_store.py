"""An account's devices, its signed device list, recovery and release: :class:`DeviceStore`.

Issue 22. The server keeps, per account, the signed device list as received
(``accounts.device_list``, never interpreted here: the route verified it), its
version, the recovery key's public half, and one ``devices`` row per device of
the list (the keys logins are checked against). An account made before device
lists has one device, its first, whose key is its identity
(:func:`device_id_of` the identity), made by migration 0004 or by
:meth:`~pqcall.server.storage.account_store.AccountStore.create_account`.

Writes are compare-and-set where they race: :meth:`DeviceStore.put_device_list`
stores a list only if its version is above the stored one, in one conditional
``UPDATE``, so two processes cannot both install a list of the same version.
Each write that drops devices deletes their tokens in the same transaction and
returns the tokens' hashes, so the caller can close their sockets
(:func:`pqcall.server.auth.revoke_tokens`). Times are unix seconds passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pqcall.server.storage.account_store import (
    DEVICE_ID_LENGTH,
    FIRST_DEVICE_NAME,
    AccountStore,
    device_id_of,
)
from pqcall.server.storage.event_store import delete_fully_acknowledged
from pqcall.server.storage.login_store import LoginStore
from pqcall.server.storage.models import accounts, devices, events, key_bundles, tokens
from pqcall.server.storage.records import (
    BundleRecord,
    DeviceListRecord,
    DeviceRecord,
    RecoveryKeyFixed,
    StaleDeviceList,
)

__all__ = [
    "DEVICE_ID_LENGTH",
    "FIRST_DEVICE_NAME",
    "DeviceStore",
    "NewDevice",
    "device_id_of",
]

RELEASED_PREFIX = "~released-"  # a released account's name: never a valid username


@dataclass(frozen=True, slots=True)
class NewDevice:
    """One device of a device list the server is about to store."""

    device_id: bytes
    name: str
    public_key: bytes


class DeviceStore:
    """Devices, device lists, recovery and release. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
        accounts: its account store (whose name cache a key change invalidates).
        logins: its login store (whose token cache a revocation invalidates).
    """

    def __init__(self, engine: AsyncEngine, accounts: AccountStore, logins: LoginStore) -> None:
        self.engine = engine  # shared connection pool, owned by Storage
        self._accounts = accounts  # name cache to invalidate
        self._logins = logins  # token cache to invalidate

    async def list_devices(self, account_id: int) -> list[DeviceRecord]:
        """The account's devices, oldest first."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(devices)
                .where(devices.c.account_id == account_id)
                .order_by(devices.c.added_at, devices.c.device_id)
            )
            return [_device(row) for row in result]

    async def get_device(self, account_id: int, device_id: bytes) -> DeviceRecord | None:
        """One device of the account, if it is in its current list."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(devices).where(
                    devices.c.account_id == account_id, devices.c.device_id == device_id
                )
            )
            row = result.one_or_none()
        return None if row is None else _device(row)

    async def device_counts(self, account_ids: Iterable[int]) -> dict[int, int]:
        """How many devices each of these accounts has (absent: none)."""
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(devices.c.account_id, func.count())
                .where(devices.c.account_id.in_(ids))
                .group_by(devices.c.account_id)
            )
            return {int(account): int(count) for account, count in result}

    async def device_list(self, account_id: int) -> DeviceListRecord:
        """The account's stored device list, version and recovery key."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(
                    accounts.c.device_list,
                    accounts.c.device_list_version,
                    accounts.c.recovery_key,
                ).where(accounts.c.id == account_id)
            )
            row = result.one_or_none()
        if row is None:
            return DeviceListRecord(None, 0, None)
        return DeviceListRecord(row.device_list, int(row.device_list_version), row.recovery_key)

    async def directory_entry(self, account_id: int) -> tuple[BundleRecord | None, bytes | None]:
        """The account's current key bundle and stored device list, in one query."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(
                    key_bundles.c.bundle,
                    key_bundles.c.bundle_created,
                    key_bundles.c.created_at,
                    accounts.c.device_list,
                )
                .join(accounts, accounts.c.id == key_bundles.c.account_id)
                .where(key_bundles.c.account_id == account_id, key_bundles.c.is_current)
                .order_by(key_bundles.c.id.desc())
                .limit(1)
            )
            row = result.one_or_none()
        if row is None:
            return None, None
        return BundleRecord(row.bundle, row.bundle_created, row.created_at), row.device_list

    async def put_device_list(
        self,
        account_id: int,
        signed: bytes,
        version: int,
        new_devices: Sequence[NewDevice],
        recovery_key: bytes | None,
        now: float,
    ) -> list[bytes]:
        """Store a verified device list if ``version`` is above the stored one.

        The ``devices`` rows become ``new_devices`` (one kept keeps its
        ``added``); the tokens of every other device of the account are deleted.
        Returns the deleted tokens' hashes.

        The recovery key may be set once; a list that changes or drops it is
        refused (a thief holding a linked device's account key must not be able
        to lock the owner out of recovery).

        Raises:
            StaleDeviceList: the stored version is ``version`` or more.
            RecoveryKeyFixed: the list changes or drops the stored recovery key.
        """
        same_recovery: Any = accounts.c.recovery_key.is_(None)
        if recovery_key is not None:
            same_recovery = same_recovery | (accounts.c.recovery_key == recovery_key)
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(accounts)
                .where(
                    accounts.c.id == account_id,
                    accounts.c.device_list_version < version,
                    same_recovery,
                )
                .values(device_list=signed, device_list_version=version, recovery_key=recovery_key)
            )
            if result.rowcount != 1:
                stored = await connection.execute(
                    select(accounts.c.device_list_version).where(accounts.c.id == account_id)
                )
                if int(stored.scalar_one()) >= version:
                    raise StaleDeviceList(f"device list version {version} is not newer")
                raise RecoveryKeyFixed("the recovery key can be replaced only by a recovery")
            gone = await self._replace_devices(connection, account_id, new_devices, now)
        self._accounts.forget_cached(account_id)  # with a bus, every node drops its caches
        self._logins.token_cache.forget_account(account_id)
        return gone

    async def recover_account(
        self,
        account_id: int,
        identity: bytes,
        bundle: bytes,
        bundle_created: int,
        signed: bytes,
        version: int,
        new_devices: Sequence[NewDevice],
        recovery_key: bytes | None,
        now: float,
    ) -> list[bytes]:
        """Give the account a new identity, key bundle and device list (recovery).

        Every token of the account is deleted, whatever its device. Returns
        their hashes.
        """
        self._accounts.forget_cached(account_id)
        async with self.engine.begin() as connection:
            await connection.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(
                    identity=identity,
                    device_list=signed,
                    device_list_version=version,
                    recovery_key=recovery_key,
                )
            )
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
            gone = await _delete_tokens(connection, account_id, keep=())
            await connection.execute(delete(devices).where(devices.c.account_id == account_id))
            await _insert_devices(connection, account_id, new_devices, now)
        self._accounts.forget_cached(account_id)
        self._logins.token_cache.forget_account(account_id)
        return gone

    async def release_account(self, username: str) -> tuple[int, list[bytes]] | None:
        """Free ``username`` (operator's ``release-user``): ``(account id, token hashes)``.

        The account's keys, devices, tokens and pending events are deleted and
        its row renamed to ``~released-<id>`` (no username can be that), so its
        calls and files keep their foreign keys and the name can be registered
        again by anyone. ``None``: no such account.
        """
        async with self.engine.begin() as connection:
            found = await connection.execute(
                select(accounts.c.id).where(accounts.c.username == username)
            )
            account_id = found.scalar_one_or_none()
            if account_id is None:
                return None
            gone = await _delete_tokens(connection, account_id, keep=())
            await connection.execute(delete(devices).where(devices.c.account_id == account_id))
            await connection.execute(delete(events).where(events.c.account_id == account_id))
            await connection.execute(
                delete(key_bundles).where(key_bundles.c.account_id == account_id)
            )
            await connection.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(
                    username=f"{RELEASED_PREFIX}{account_id}",
                    identity=b"",
                    device_list=None,
                    device_list_version=0,
                    recovery_key=None,
                )
            )
        self._accounts.forget_cached(account_id)
        self._logins.token_cache.forget_account(account_id)
        return account_id, gone

    async def _replace_devices(
        self,
        connection: AsyncConnection,
        account_id: int,
        new_devices: Sequence[NewDevice],
        now: float,
    ) -> list[bytes]:
        """Make the account's rows ``new_devices``; delete the tokens of the others."""
        wanted = {device.device_id: device for device in new_devices}
        result = await connection.execute(
            select(devices.c.device_id, devices.c.name, devices.c.public_key).where(
                devices.c.account_id == account_id
            )
        )
        current = {bytes(row.device_id): row for row in result}
        dropped = [
            device_id
            for device_id, row in current.items()
            if device_id not in wanted
            or wanted[device_id].public_key != bytes(row.public_key)
            or wanted[device_id].name != row.name
        ]
        if dropped:
            await connection.execute(
                delete(devices).where(
                    devices.c.account_id == account_id, devices.c.device_id.in_(dropped)
                )
            )
        added = [
            device
            for device_id, device in wanted.items()
            if device_id not in current or device_id in dropped
        ]
        await _insert_devices(connection, account_id, added, now)
        if dropped:  # what the remaining devices all acknowledged was kept for a dropped one
            await delete_fully_acknowledged(connection, [account_id])
        return await _delete_tokens(connection, account_id, keep=wanted)


def _device(row: Row[Any]) -> DeviceRecord:
    return DeviceRecord(
        account_id=row.account_id,
        device_id=bytes(row.device_id),
        name=row.name,
        public_key=bytes(row.public_key),
        added=row.added_at,
    )


async def _insert_devices(
    connection: AsyncConnection, account_id: int, new_devices: Sequence[NewDevice], now: float
) -> None:
    if not new_devices:
        return
    await connection.execute(
        insert(devices),
        [
            {
                "account_id": account_id,
                "device_id": device.device_id,
                "name": device.name,
                "public_key": device.public_key,
                "added_at": now,
            }
            for device in new_devices
        ],
    )


async def _delete_tokens(
    connection: AsyncConnection, account_id: int, keep: Iterable[bytes]
) -> list[bytes]:
    """Delete the account's tokens except those of the devices in ``keep``; their hashes."""
    kept = sorted(set(keep))
    condition = tokens.c.account_id == account_id
    if kept:
        condition = condition & (tokens.c.device_id.is_(None) | tokens.c.device_id.not_in(kept))
    result = await connection.execute(
        delete(tokens).where(condition).returning(tokens.c.token_hash)
    )
    return [bytes(token_hash) for (token_hash,) in result]
