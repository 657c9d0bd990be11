"""Storage failures, in one place: what a phone gets back and what the log says.

A database or disk that fails is not a bug in the server, so it is not a 500:

- :func:`classify` names the fault behind an exception, or ``None`` for anything
  else (a bug, answered 500 as before). :data:`UNREACHABLE`: the database does not
  answer (PostgreSQL down or cut off, a SQLite file that cannot be opened, a pool
  with no free connection): 503 with ``Retry-After``. :data:`DISK_FULL`: SQLite's
  "database or disk is full", PostgreSQL's ``disk_full`` (53100), ``ENOSPC`` from the
  blob store: 507. :data:`DAMAGED`: a SQLite file that is not a database any more: 503.
- :data:`STORAGE_ERRORS` are the exception types :func:`pqcall.server.app.create_app`
  routes to one handler, which answers :func:`fault_response` for a fault.
- :class:`StorageStatus` logs one line per change of state (``database unreachable:
  ...`` once, ``database reachable again`` once) instead of a traceback per failed
  request or background pass: :class:`StorageFaultLogFilter` on the log handlers
  drops the tracebacks of faults and reports them to it, and :class:`StorageWatch`
  notices the recovery. ``GET /health`` asks :func:`storage_problem`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy.exc
from fastapi.responses import JSONResponse

from pqcall.server.background import BackgroundTask

if TYPE_CHECKING:
    from pqcall.server.context import AppContext

logger = logging.getLogger("pqcall.server.storage")

LOW_DISK_BYTES = 1024 * 1024  # free bytes under which /health reports the data disk full
WATCH_INTERVAL_S = 1.0  # seconds between checks while a fault is on record
MAX_CAUSES = 8  # links of an exception's cause chain that classify() follows

_SQLITE_FULL = {sqlite3.SQLITE_FULL}
_SQLITE_UNREACHABLE = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_PROTOCOL,
}
_SQLITE_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_UNREACHABLE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True, slots=True)
class StorageFault:
    """One kind of storage failure and how the API answers it."""

    name: str
    """What the log's state-change line starts with: ``database unreachable``."""
    status_code: int
    """The HTTP status of the answer."""
    message: str
    """The ``error`` of the answer, for people."""
    retry_after_s: int
    """The answer's ``Retry-After``."""


UNREACHABLE = StorageFault(
    "database unreachable", 503, "the server cannot reach its database, try again shortly", 5
)
DISK_FULL = StorageFault("data disk full", 507, "the server's disk is full, try again later", 60)
DAMAGED = StorageFault(
    "database damaged",
    503,
    "the server's database is damaged, try again later (its operator must restore it)",
    60,
)

STORAGE_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.TimeoutError,
    OSError,
    sqlite3.Error,
)
"""Exception types whose instances may be a storage fault (the rest of them are bugs)."""


def classify(exc: BaseException) -> StorageFault | None:
    """The storage fault behind ``exc`` (or its causes), ``None`` if it is none."""
    causes = list(_causes(exc))
    for kind in (DISK_FULL, DAMAGED, UNREACHABLE):
        if any(_is(kind, cause) for cause in causes):
            return kind
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return UNREACHABLE
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < MAX_CAUSES and current not in seen:
        seen.append(current)
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
        if current is None:
            current = seen[-1].__context__


def _is(kind: StorageFault, exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    sqlstate = str(getattr(exc, "sqlstate", None) or "")
    if kind is DISK_FULL:
        return (
            (isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS)
            or primary in _SQLITE_FULL
            or sqlstate == "53100"
        )
    if kind is DAMAGED:
        return primary in _SQLITE_DAMAGED
    return (
        isinstance(exc, sqlalchemy.exc.TimeoutError | ConnectionError | TimeoutError)
        or (isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS)
        or primary in _SQLITE_UNREACHABLE
        or sqlstate.startswith(("08", "57P", "53"))
        or type(exc).__name__ == "ConnectionDoesNotExistError"
        or (type(exc).__module__.startswith("asyncpg") and "connection is closed" in str(exc))
    )


def fault_response(fault: StorageFault) -> JSONResponse:
    """``{"error": ...}`` with the fault's status and ``Retry-After``."""
    return JSONResponse(
        {"error": fault.message},
        status_code=fault.status_code,
        headers={"Retry-After": str(fault.retry_after_s)},
    )


def describe(exc: BaseException) -> str:
    """One line for a storage failure: the innermost driver message, no traceback."""
    causes = list(_causes(exc))
    for cause in reversed(causes):
        text = str(cause).strip()
        if text:
            return text.splitlines()[0]
    return type(causes[-1]).__name__


class StorageStatus:
    """The storage fault on record, if any; logs one line when it changes."""

    def __init__(self) -> None:
        self.fault: StorageFault | None = None  # the fault on record; None while all is well
        self.detail = ""  # its first line, as logged

    def failed(self, fault: StorageFault, detail: str) -> None:
        """Record ``fault``; log ``"<fault.name>: <detail>"`` if it is news."""
        if self.fault is fault:
            return
        self.fault, self.detail = fault, detail
        logger.error("%s: %s", fault.name, detail)

    def recovered(self) -> None:
        """Clear the fault on record; log that storage is back if there was one."""
        if self.fault is None:
            return
        name, self.fault = self.fault.name, None
        if name == UNREACHABLE.name:
            logger.warning("database reachable again")
        else:
            logger.warning("%s: resolved, storage works again", name)


class StorageFaultLogFilter(logging.Filter):
    """On a log handler: drops a record whose traceback is a storage fault, tells the status."""

    def __init__(self, status: StorageStatus) -> None:
        super().__init__()
        self.status = status  # where a dropped fault is reported (and logged once)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record carrying a storage fault's traceback, True otherwise."""
        if record.name == logger.name or not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        fault = classify(exc)
        if fault is None:
            return True
        self.status.failed(fault, describe(exc))
        return False


def install_log_filter(status: StorageStatus) -> None:
    """Attach a :class:`StorageFaultLogFilter` to the root's and uvicorn's log handlers."""
    for name in ("", "uvicorn", "uvicorn.error"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, StorageFaultLogFilter) for f in handler.filters):
                handler.addFilter(StorageFaultLogFilter(status))


def low_disk(directories: list[Path]) -> str | None:
    """``"<dir>: N bytes free"`` for the first of ``directories`` nearly full, else None."""
    for directory in directories:
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            continue
        if free < LOW_DISK_BYTES:
            return f"{directory}: {free} bytes free"
    return None


async def storage_problem(context: AppContext) -> tuple[StorageFault, str] | None:
    """What keeps storage from working now (database down, disk full), or None."""
    storage = context.storage
    try:
        async with storage.engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
    except Exception as exc:
        return classify(exc) or UNREACHABLE, describe(exc)
    directories = [context.settings.data_dir]
    database = storage.engine.url.database
    if storage.engine.url.get_backend_name() == "sqlite" and database:
        directories.append(Path(database).parent)
    full = low_disk(directories)
    if full is not None:
        return DISK_FULL, full
    if context.storage_status.fault is DAMAGED:  # quick_check would take too long here
        return DAMAGED, context.storage_status.detail
    return None


async def check_storage(context: AppContext) -> tuple[StorageFault, str] | None:
    """:func:`storage_problem`, with the outcome recorded on ``context.storage_status``."""
    problem = await storage_problem(context)
    if problem is None:
        context.storage_status.recovered()
    else:
        context.storage_status.failed(*problem)
    return problem


class StorageWatch:
    """Component: while a fault is on record, checks storage every :data:`WATCH_INTERVAL_S`."""

    def __init__(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        self._interval_s = interval_s  # seconds between checks
        self._task = BackgroundTask("pqcall-storage-watch")  # the check loop while running

    async def start(self, context: AppContext) -> None:
        self._task.start(self._run(context))

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self, context: AppContext) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if context.storage_status.fault is not None:
                await check_storage(context)
