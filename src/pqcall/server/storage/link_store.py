"""Link rendezvous rows (issue 22): :class:`LinkStore`.

A new device leaves an opaque request under a random ``link_id`` with the
SHA-256 of a secret only it knows; a logged-in device of the account reads the
request and leaves one response; the new device collects the response with the
secret, which deletes the row. Nothing here reads the blobs.

Every write is one conditional statement, so two processes on one database
cannot both answer a request (:meth:`LinkStore.answer`) or both collect a
response (:meth:`LinkStore.collect`). The per-client and total bounds of
:meth:`LinkStore.create` are counted inside the insert's transaction; processes
racing at the bound may overshoot it by one row each. Times are unix seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pqcall.server.storage.models import link_requests
from pqcall.server.storage.records import StorageError


class LinkLimitReached(StorageError):
    """A new link request would pass a bound: ``per_client`` says which."""

    def __init__(self, per_client: bool) -> None:
        super().__init__(
            "too many pending link requests" + (" from this address" if per_client else "")
        )
        self.per_client = per_client  # True: this client's bound; False: the server's total


class LinkAnswer(enum.Enum):
    """What :meth:`LinkStore.answer` did."""

    STORED = "stored"
    UNKNOWN = "unknown"  # no such live request
    ALREADY = "already"  # answered before


@dataclass(frozen=True, slots=True)
class LinkPollResult:
    """What :meth:`LinkStore.collect` found: a response (now deleted), pending, or nothing."""

    response: bytes | None
    pending: bool


class LinkStore:
    """Link requests. Safe to share between tasks.

    Args:
        engine: the shared engine of :class:`~pqcall.server.storage.Storage`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool, owned by Storage

    async def create(
        self,
        link_id: str,
        request: bytes,
        poll_hash: bytes,
        client: str,
        now: float,
        expires_at: float,
        *,
        max_per_client: int,
        max_total: int,
        username: str | None = None,
    ) -> None:
        """Store a new request (for ``username``'s account only, if given); expired ones go first.

        Raises:
            LinkLimitReached: ``client`` has ``max_per_client`` live requests, or
                the server ``max_total``.
        """
        async with self.engine.begin() as connection:
            await connection.execute(delete(link_requests).where(link_requests.c.expires_at <= now))
            mine = await connection.execute(
                select(func.count()).where(link_requests.c.client == client)
            )
            if int(mine.scalar_one()) >= max_per_client:
                raise LinkLimitReached(per_client=True)
            total = await connection.execute(select(func.count()).select_from(link_requests))
            if int(total.scalar_one()) >= max_total:
                raise LinkLimitReached(per_client=False)
            await connection.execute(
                insert(link_requests).values(
                    link_id=link_id,
                    request=request,
                    poll_hash=poll_hash,
                    client=client,
                    expires_at=expires_at,
                    username=username,
                )
            )

    async def get_request(
        self, link_id: str, now: float, username: str
    ) -> tuple[bytes, float] | None:
        """A live request ``username`` may see (one for no account, or for it), and its expiry."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(link_requests.c.request, link_requests.c.expires_at).where(
                    link_requests.c.link_id == link_id,
                    link_requests.c.expires_at > now,
                    _for(username),
                )
            )
            row = result.one_or_none()
        return None if row is None else (bytes(row.request), float(row.expires_at))

    async def answer(
        self, link_id: str, response: bytes, account_id: int, now: float, username: str
    ) -> LinkAnswer:
        """Store the one response to a live request ``username`` may answer."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(link_requests)
                .where(
                    link_requests.c.link_id == link_id,
                    link_requests.c.expires_at > now,
                    link_requests.c.response.is_(None),
                    _for(username),
                )
                .values(response=response, answered_by=account_id)
            )
            if result.rowcount == 1:
                return LinkAnswer.STORED
            found = await connection.execute(
                select(link_requests.c.link_id).where(
                    link_requests.c.link_id == link_id,
                    link_requests.c.expires_at > now,
                    _for(username),
                )
            )
        return LinkAnswer.UNKNOWN if found.one_or_none() is None else LinkAnswer.ALREADY

    async def collect(self, link_id: str, poll_hash: bytes, now: float) -> LinkPollResult | None:
        """The response for the holder of the poll secret, handed over once (the row goes).

        ``None``: no live request with this id and poll hash.
        """
        mine = (
            (link_requests.c.link_id == link_id)
            & (link_requests.c.poll_hash == poll_hash)
            & (link_requests.c.expires_at > now)
        )
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(link_requests)
                .where(mine & link_requests.c.response.is_not(None))
                .returning(link_requests.c.response)
            )
            row = result.one_or_none()
            if row is not None:
                return LinkPollResult(bytes(row.response), pending=False)
            waiting = await connection.execute(select(link_requests.c.link_id).where(mine))
        return None if waiting.one_or_none() is None else LinkPollResult(None, pending=True)

    async def purge_expired(self, now: float) -> int:
        """Delete expired requests; how many went."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(link_requests).where(link_requests.c.expires_at <= now)
            )
        return int(result.rowcount)


def _for(username: str) -> Any:
    """The rows ``username``'s account may see: those for no account in particular, or for it."""
    return link_requests.c.username.is_(None) | (link_requests.c.username == username)
