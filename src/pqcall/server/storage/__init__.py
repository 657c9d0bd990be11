"""Durable state of the server: SQLAlchemy 2 (async) on SQLite or PostgreSQL.

- :mod:`.models`: the tables (one schema, both databases).
- :mod:`.database`: engines from a URL, Alembic migrations shipped in the package.
- :mod:`.repository`: :class:`Storage`, the only place routes get data from; it holds
  one store per aggregate: :mod:`.account_store`, :mod:`.login_store`,
  :mod:`.call_store`, :mod:`.event_store`, :mod:`.file_store`.
- :mod:`.records`: the frozen records, outcomes and errors the stores return.
"""

from pqcall.server.storage.records import (
    FILE_STORED,
    FILE_UPLOADING,
    AccountRecord,
    BundleRecord,
    CallExists,
    CallRecord,
    ChallengeUse,
    DeviceListRecord,
    DeviceRecord,
    EventRecord,
    FileLimitReached,
    FileRecord,
    StaleDeviceList,
    StorageError,
    UsernameTaken,
)
from pqcall.server.storage.repository import Storage

__all__ = [
    "FILE_STORED",
    "FILE_UPLOADING",
    "AccountRecord",
    "BundleRecord",
    "CallExists",
    "CallRecord",
    "ChallengeUse",
    "DeviceListRecord",
    "DeviceRecord",
    "EventRecord",
    "FileLimitReached",
    "FileRecord",
    "StaleDeviceList",
    "Storage",
    "StorageError",
    "UsernameTaken",
]
