"""Login challenges and the bearer tokens they are exchanged for: :class:`LoginStore`.

A challenge is used at most once, even by concurrent requests in several
processes (:meth:`LoginStore.use_challenge` is one compare-and-set). Tokens
are stored by hash only. Times are unix seconds passed in by the caller.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pqcall.server.storage.account_store import account_from_row
from pqcall.server.storage.models import accounts, challenges, tokens
from pqcall.server.storage.records import AccountRecord, ChallengeUse


class LoginStore:
    """Challenges and tokens. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage

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
        return None if row is None else (account_from_row(row), row.expires_at)

    async def delete_token(self, token_hash: bytes) -> bool:
        """Revoke a token; whether it existed."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(tokens).where(tokens.c.token_hash == token_hash)
            )
        return bool(result.rowcount)

    async def delete_account_tokens(self, account_id: int) -> int:
        """Revoke every token of an account ("log out everywhere"); how many there were."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(tokens).where(tokens.c.account_id == account_id)
            )
        return int(result.rowcount)

    async def purge_expired(self, now: float) -> int:
        """Delete expired tokens and challenges; how many rows went."""
        async with self.engine.begin() as connection:
            gone = await connection.execute(delete(tokens).where(tokens.c.expires_at <= now))
            used = await connection.execute(
                delete(challenges).where(challenges.c.expires_at <= now)
            )
        return int(gone.rowcount) + int(used.rowcount)
