"""Login challenges and the bearer tokens they are exchanged for: :class:`LoginStore`.

A challenge is used at most once, even by concurrent requests in several
processes (:meth:`LoginStore.use_challenge` is one compare-and-set). Tokens
are stored by hash only. Times are unix seconds passed in by the caller.

Token lookups are cached (:class:`TokenCache`): every authenticated request
looks its token up, and a database round trip for each was a seventh of a call
setup's statements. An entry is dropped at once when this process deletes the
token (logout, log out everywhere), and lives at most
:data:`TOKEN_CACHE_TTL_S` otherwise, which bounds how long a token revoked
through another process stays usable here (docs/decisions/0900-lean-call-path.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pqcall.server.storage.account_store import ACCOUNT_COLUMNS, account_from_row
from pqcall.server.storage.models import accounts, challenges, devices, tokens
from pqcall.server.storage.records import AccountRecord, ChallengeUse

TOKEN_CACHE_SIZE = 100_000  # entries (~300 bytes each)
TOKEN_CACHE_TTL_S = 10.0  # how long another process's revocation may go unseen here


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token hash stands for."""

    account: AccountRecord
    expires_at: float
    device_id: bytes | None
    """The device it was issued to (issue 22); ``None`` only for a token older than devices."""
    device_name: str | None = None
    """That device's name in the account's list (``None``: not in it)."""
    device_count: int = 1
    """How many devices the account has (as of the lookup; cached like the rest)."""


class TokenCache:
    """Token hash -> :class:`TokenInfo`, bounded in size and age (monotonic clock).

    A lookup that started before an invalidation never stores its (older)
    answer afterwards: :meth:`generation` is read before the database is asked
    and :meth:`put` drops the answer if anything was invalidated since.
    """

    def __init__(self, size: int = TOKEN_CACHE_SIZE, ttl_s: float = TOKEN_CACHE_TTL_S) -> None:
        self.size = size  # most entries kept; the least recently used go first
        self.ttl_s = ttl_s  # seconds an entry is trusted
        self._entries: OrderedDict[bytes, tuple[TokenInfo, float]] = OrderedDict()
        self._generation = 0  # bumped by every invalidation

    @property
    def generation(self) -> int:
        """Read before a lookup; pass to :meth:`put`."""
        return self._generation

    def get(self, token_hash: bytes) -> TokenInfo | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        info, stored = entry
        if time.monotonic() - stored > self.ttl_s:
            del self._entries[token_hash]
            return None
        self._entries.move_to_end(token_hash)
        return info

    def put(self, token_hash: bytes, found: TokenInfo, generation: int) -> None:
        if generation != self._generation:
            return  # something was revoked while this lookup ran: do not trust it
        self._entries[token_hash] = (found, time.monotonic())
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, token_hash: bytes) -> None:
        self._generation += 1
        self._entries.pop(token_hash, None)

    def forget_account(self, account_id: int) -> None:
        self._generation += 1
        for token_hash in [
            h for h, (info, _) in self._entries.items() if info.account.id == account_id
        ]:
            del self._entries[token_hash]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()


class LoginStore:
    """Challenges and tokens. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage
        self.token_cache = TokenCache()  # lookups of live tokens; dropped on delete

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

    async def create_token(
        self, token_hash: bytes, account_id: int, expires_at: float, device_id: bytes | None = None
    ) -> None:
        """Store a bearer token by its hash, issued to ``device_id`` of the account."""
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(tokens).values(
                    token_hash=token_hash,
                    account_id=account_id,
                    expires_at=expires_at,
                    device_id=device_id,
                )
            )

    async def account_for_token(
        self, token_hash: bytes, *, fresh: bool = False
    ) -> tuple[AccountRecord, float] | None:
        """The account a token hash belongs to, and the token's expiry; expired ones too.

        From the cache unless ``fresh`` (then from the database, and cached).
        The account record's ``last_seen`` may be stale: read it with
        :meth:`AccountStore.get_account`.
        """
        found = await self.token_info(token_hash, fresh=fresh)
        return None if found is None else (found.account, found.expires_at)

    async def token_info(self, token_hash: bytes, *, fresh: bool = False) -> TokenInfo | None:
        """:meth:`account_for_token` with the token's device."""
        if not fresh:
            cached = self.token_cache.get(token_hash)
            if cached is not None:
                return cached
        generation = self.token_cache.generation
        found = await self._token_info(token_hash)
        if found is not None:
            self.token_cache.put(token_hash, found, generation)
        return found

    async def _token_info(self, token_hash: bytes) -> TokenInfo | None:
        listed = devices.alias("listed")
        device_count = (
            select(func.count())
            .select_from(listed)
            .where(listed.c.account_id == tokens.c.account_id)
            .scalar_subquery()
        )
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(
                    *ACCOUNT_COLUMNS,
                    tokens.c.expires_at,
                    tokens.c.device_id,
                    devices.c.name,
                    device_count.label("device_count"),
                )
                .join(tokens, tokens.c.account_id == accounts.c.id)
                .outerjoin(
                    devices,
                    (devices.c.account_id == tokens.c.account_id)
                    & (devices.c.device_id == tokens.c.device_id),
                )
                .where(tokens.c.token_hash == token_hash)
            )
            row = result.one_or_none()
        if row is None:
            return None
        device = None if row.device_id is None else bytes(row.device_id)
        return TokenInfo(
            account_from_row(row), row.expires_at, device, row.name, int(row.device_count)
        )

    async def delete_token(self, token_hash: bytes) -> bool:
        """Revoke a token; whether it existed."""
        self.token_cache.forget(token_hash)
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(tokens).where(tokens.c.token_hash == token_hash)
            )
        self.token_cache.forget(token_hash)  # and a lookup that read it before the commit
        return bool(result.rowcount)

    def forget_tokens(self, token_hashes: list[bytes]) -> None:
        """Drop tokens another store deleted from the cache (device removed, recovery)."""
        for token_hash in token_hashes:
            self.token_cache.forget(token_hash)

    async def delete_account_tokens(self, account_id: int) -> int:
        """Revoke every token of an account ("log out everywhere"); how many there were."""
        self.token_cache.forget_account(account_id)
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(tokens).where(tokens.c.account_id == account_id)
            )
        self.token_cache.forget_account(account_id)  # and a lookup that read before the commit
        return int(result.rowcount)

    async def purge_expired(self, now: float) -> int:
        """Delete expired tokens and challenges; how many rows went."""
        # cached entries keep their expiry, which every caller checks: nothing to drop
        async with self.engine.begin() as connection:
            gone = await connection.execute(delete(tokens).where(tokens.c.expires_at <= now))
            used = await connection.execute(
                delete(challenges).where(challenges.c.expires_at <= now)
            )
        return int(gone.rowcount) + int(used.rowcount)
