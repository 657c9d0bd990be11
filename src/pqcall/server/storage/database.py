"""Engines from a URL, and the schema migrations that ship inside the package.

Two kinds of URL are supported: ``sqlite+aiosqlite:///path/to/file.db`` and
``postgresql+asyncpg://user@host:port/database``. :func:`run_migrations`
brings either to the newest schema with Alembic; the scripts live in
``pqcall/server/storage/migrations`` so an installed pqcall can migrate
without a checkout. A database already at :data:`HEAD_REVISION` is recognized
with one query, without loading Alembic, which keeps the server's start fast.

Before migrating, a SQLite file is checked (:func:`check_sqlite_file`): a
0-byte file (truncated: every account would be gone) and a file that fails
``PRAGMA quick_check`` are refused with one line instead of served.
:func:`hold_sqlite_lock` keeps a second server off a SQLite file for the life of
the process (``<file>.lock``, ``fcntl.flock``, the holder's pid inside).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Connection, event, inspect, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pqcall.exceptions import ServerError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
SQLITE_BUSY_TIMEOUT_MS = 10_000
HEAD_REVISION = "0005"  # the newest file in migrations/versions (a test keeps them equal)
MIGRATION_LOCK_KEY = 0x7071_6361_6C6C  # "pqcall": PostgreSQL advisory lock held while migrating
LOCK_SUFFIX = ".lock"  # next to a SQLite file: held by the server using it
POOL_SIZE = 20  # PostgreSQL connections per process, all kept open (no overflow churn)


def parse_url(url: str) -> URL:
    """Parse and check a database URL.

    Raises:
        ServerError: not a URL, or not one of :data:`SUPPORTED_DRIVERS`.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ServerError(f"database URL {url!r} is not a valid URL") from None
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise ServerError(
            f"database URL must start with {' or '.join(d + '://' for d in SUPPORTED_DRIVERS)}"
            f" (got {parsed.drivername}://)"
        )
    if parsed.drivername.startswith("sqlite") and not parsed.database:
        raise ServerError("SQLite database URL needs a file path (sqlite+aiosqlite:///path.db)")
    return parsed


def display_url(url: str) -> str:
    """``url`` with any password hidden, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``, configured the same way for every caller.

    PostgreSQL gets a fixed pool of :data:`POOL_SIZE` connections, no overflow
    (overflow connections were opened and closed continually under load) and no
    check before each use (``pool_pre_ping`` cost a ``BEGIN; ROLLBACK`` round
    trip per checkout): a connection that the database dropped fails its
    request once (503, :mod:`pqcall.server.faults`) and SQLAlchemy discards the
    whole pool, so the next request connects anew.

    SQLite gets foreign keys enforced (as PostgreSQL does), write-ahead logging
    so readers do not block the writer, and a busy timeout instead of
    immediate "database is locked" errors. Its parent directory is created
    0700; the file, its ``-wal`` and ``-shm`` get 0600 from the process umask
    that ``pqcall server`` sets (:mod:`pqcall.server.runner`).

    Raises:
        ServerError: the URL is invalid or of an unsupported kind.
    """
    parsed = parse_url(url)
    if parsed.drivername.startswith("sqlite"):
        assert parsed.database is not None
        if parsed.database != ":memory:":
            directory = Path(parsed.database).parent
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ServerError(f"cannot create {directory}: {exc.strerror}") from None
        engine = create_async_engine(parsed, **kwargs)
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": 0, **kwargs}
    try:
        return create_async_engine(parsed, **options)
    except NoSuchModuleError:  # pragma: no cover - asyncpg is a dependency
        raise ServerError(f"no driver for {parsed.drivername}") from None


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, pointing at the packaged migrations.

    With ``connection``, ``env.py`` migrates through it instead of opening its own.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        # processes starting together migrate one at a time; the lock ends with the transaction
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database behind ``engine`` to the newest schema. Idempotent.

    Raises:
        ServerError: the database cannot be reached or migrated; one line says why.
    """
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, ":memory:"):
        check_sqlite_file(Path(engine.url.database or ""))
    try:
        if await current_revision(engine) == HEAD_REVISION:
            return
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    except ServerError:
        raise
    except Exception as exc:
        raise ServerError(
            f"cannot open database {display_url(str(engine.url))}: {_describe(exc)}"
        ) from exc


def _has_version_table(connection: Connection) -> bool:
    return inspect(connection).has_table("alembic_version")


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema revision the database is at; ``None`` for an empty database."""
    async with engine.connect() as connection:
        if not await connection.run_sync(_has_version_table):
            return None
        result = await connection.execute(text("SELECT version_num FROM alembic_version"))
        revisions = list(result.scalars())
    return revisions[0] if len(revisions) == 1 else None


async def run_migrations(url: str) -> None:
    """Open ``url``, migrate it to the newest schema, and close it. Idempotent.

    Raises:
        ServerError: the URL is invalid, or the database cannot be reached or migrated.
    """
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def check_sqlite_file(path: Path) -> None:
    """Refuse a SQLite file that is empty (0 bytes) or fails ``PRAGMA quick_check``.

    A missing file is fine (a new database). SQLite itself would take a 0-byte
    file for a new, empty database, silently; pqcall never leaves one behind
    (its first statement writes the header), so one means a truncated file.

    Raises:
        ServerError: one line naming the file, what is wrong and what to do.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServerError(f"cannot read database file {path}: {exc.strerror}") from None
    wal = path.with_name(path.name + "-wal")
    if size == 0 and not (wal.exists() and wal.stat().st_size > 0):
        raise ServerError(
            f"database file {path} is empty (0 bytes): its accounts are gone or it was"
            " truncated; restore it from a backup, or delete it to start a new empty database"
        )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as connection:
            rows = [str(row[0]) for row in connection.execute("PRAGMA quick_check")]
    except sqlite3.Error as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        raise ServerError(
            f"database file {path} is damaged (PRAGMA quick_check: {rows[0]});"
            " restore it from a backup"
        )


def hold_sqlite_lock(url: str) -> IO[str] | None:
    """Lock the SQLite file of ``url`` for this process; the open lock file (keep it open).

    ``None`` for PostgreSQL (several servers may share it). The lock is released
    when the returned file is closed or the process ends.

    Raises:
        ServerError: another process holds it (one line, with its pid when known).
    """
    parsed = parse_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, ":memory:"):
        return None
    database = Path(parsed.database or "")
    path = database.with_name(database.name + LOCK_SUFFIX)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = path.open("a+")
    except OSError as exc:
        raise ServerError(f"cannot open lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise ServerError(
            f"another pqcall server{who} is using the database {database};"
            " stop it first, or give this one its own --data-dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _describe(exc: BaseException) -> str:
    """One line for a database failure, without a traceback."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return text or type(original).__name__
