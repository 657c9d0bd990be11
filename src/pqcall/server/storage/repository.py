"""``Storage``: the server's durable state, one store per aggregate.

Routes and background tasks never write SQL: they call the methods of
``storage.accounts`` (:class:`~.account_store.AccountStore`), ``storage.logins``
(:class:`~.login_store.LoginStore`), ``storage.calls``
(:class:`~.call_store.CallStore`), ``storage.events``
(:class:`~.event_store.EventStore`) and ``storage.files``
(:class:`~.file_store.FileStore`), and get frozen records back
(:mod:`.records`). Each method is one short transaction. Writes that race with
another process are written as one conditional statement (compare-and-set),
so they stay correct with several server processes on one PostgreSQL:
:meth:`.LoginStore.use_challenge` and :meth:`.CallStore.update_call_state` are
the examples. The stores share one engine; this class opens and closes it.
Where one request writes several things (a call's new state and the events it
pushes), it opens :meth:`Storage.transaction` and passes the connection to
each store method (``connection=``): one transaction, one commit.

Times are unix seconds passed in by the caller (``now``), never read here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pqcall.server.storage import database
from pqcall.server.storage.account_store import AccountStore
from pqcall.server.storage.call_store import CallStore
from pqcall.server.storage.device_store import DeviceStore
from pqcall.server.storage.event_store import EventStore
from pqcall.server.storage.file_store import FileStore
from pqcall.server.storage.login_store import LoginStore


class Storage:
    """The server's durable state. One per process; safe to share between tasks.

    Args:
        engine: an engine from :func:`pqcall.server.storage.database.create_engine`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # shared connection pool; disposed by close()
        self.accounts = AccountStore(engine)  # accounts and key bundles
        self.logins = LoginStore(engine)  # login challenges and bearer tokens
        self.calls = CallStore(engine)  # call rows and their state
        self.events = EventStore(engine)  # pending push events
        self.files = FileStore(engine)  # stored files' rows (not their bytes)
        self.devices = DeviceStore(engine, self.accounts, self.logins)  # issue 22

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

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction for several store calls: committed at the end, rolled back on error."""
        async with self.engine.begin() as connection:
            yield connection

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
