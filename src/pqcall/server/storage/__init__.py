"""Durable state of the server: SQLAlchemy 2 (async) on SQLite or PostgreSQL.

- :mod:`.models`: the tables (one schema, both databases).
- :mod:`.database`: engines from a URL, Alembic migrations shipped in the package.
- :mod:`.repository`: :class:`Storage`, the only place routes get data from.
"""

from pqcall.server.storage.repository import (
    AccountRecord,
    CallExists,
    CallRecord,
    ChallengeUse,
    EventRecord,
    FileLimitReached,
    FileRecord,
    Storage,
    StorageError,
    UsernameTaken,
)

__all__ = [
    "AccountRecord",
    "CallExists",
    "CallRecord",
    "ChallengeUse",
    "EventRecord",
    "FileLimitReached",
    "FileRecord",
    "Storage",
    "StorageError",
    "UsernameTaken",
]
