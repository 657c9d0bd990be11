"""The tables, as SQLAlchemy Core metadata; Alembic's migrations must match them.

Conventions that keep SQLite and PostgreSQL identical:

- times are unix seconds (UTC) in ``DOUBLE PRECISION`` columns, never
  ``DATETIME`` (SQLite has no time zones);
- binary values are ``LargeBinary`` (``BLOB`` / ``bytea``);
- small structured values are ``JSON``;
- 64-bit autoincrement keys are ``BIGINT`` on PostgreSQL and ``INTEGER`` on
  SQLite, where only ``INTEGER PRIMARY KEY`` autoincrements.

``tests/server/test_storage.py`` checks that the migrations create exactly
this schema on both databases.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(32), nullable=False, unique=True),  # normalized
    Column("identity", LargeBinary, nullable=False),  # encoded hybrid identity public key
    Column("created_at", Double, nullable=False),
    Column("last_seen_at", Double, nullable=True),  # last login or push connection
    Column("device_list", LargeBinary, nullable=True),  # encoded SignedDeviceList; None: never sent
    Column("device_list_version", BigInteger, nullable=False, server_default="0"),
    Column("recovery_key", LargeBinary, nullable=True),  # the recovery key's public half
)

devices = Table(  # the devices of the account's current device list (one for an old account)
    "devices",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("device_id", LargeBinary(16), primary_key=True),  # SHA-256(public key)[:16]
    Column("name", String(64), nullable=False),
    Column("public_key", LargeBinary, nullable=False),  # encoded hybrid identity public key
    Column("added_at", Double, nullable=False),
)

key_bundles = Table(
    "key_bundles",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("bundle", LargeBinary, nullable=False),  # encoded, verified KeyBundle
    Column("bundle_created", BigInteger, nullable=False),  # the bundle's own `created`
    Column("created_at", Double, nullable=False),  # when the server received it
    Column("is_current", Boolean, nullable=False),
    Index(None, "account_id", "is_current"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),  # SHA-256 of the bearer token
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("device_id", LargeBinary(16), nullable=True),  # the device that logged in
    Index(None, "expires_at"),
)

challenges = Table(
    "challenges",
    metadata,
    Column("challenge", LargeBinary(32), primary_key=True),
    Column("username", String(32), nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("used", Boolean, nullable=False),
    Index(None, "expires_at"),
)

calls = Table(
    "calls",
    metadata,
    Column("id", String(32), primary_key=True),  # the caller's call_id
    Column("caller_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("callee_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("state", String(16), nullable=False),  # pqcall.signaling.callstate.State
    Column("reason", String(32), nullable=True),
    Column("offer", LargeBinary, nullable=True),
    Column("answer", LargeBinary, nullable=True),
    Column("confirm", LargeBinary, nullable=True),
    Column("caller_candidates", JSON, nullable=False),  # [{"host": ..., "port": ...}]
    Column("callee_candidates", JSON, nullable=False),
    Column("caller_seen_address", Text, nullable=True),  # "host:port" the server saw
    Column("callee_seen_address", Text, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("answered_at", Double, nullable=True),
    Column("ended_at", Double, nullable=True),
    Column("ended_by", String(16), nullable=True),  # caller | callee | system
    Index(None, "callee_id", "state"),
    Index(None, "caller_id", "state"),
    Index(None, "state", "created_at"),
)

events = Table(
    "events",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    Index(None, "account_id", "seq"),
    Index(None, "created_at"),  # retention
    sqlite_autoincrement=True,  # a seq is never reused, even after the newest rows are deleted
)

event_acks = Table(  # which device of a several-device account has acknowledged an event
    "event_acks",
    metadata,
    Column("seq", BigId, ForeignKey("events.seq", ondelete="CASCADE"), primary_key=True),
    Column("device_id", LargeBinary(16), primary_key=True),
)

link_requests = Table(  # server/link_rendezvous.py: opaque blobs between two devices
    "link_requests",
    metadata,
    Column("link_id", String(32), primary_key=True),
    Column("request", LargeBinary, nullable=False),
    Column("poll_hash", LargeBinary(32), nullable=False),  # SHA-256 of the poller's secret
    Column("response", LargeBinary, nullable=True),
    Column("answered_by", Integer, ForeignKey("accounts.id"), nullable=True),
    Column("client", String(64), nullable=False),  # the creator's address key (rate limits)
    Column("username", String(32), nullable=True),  # only this account may read or answer it
    Column("expires_at", Double, nullable=False),
    Index(None, "client"),
    Index(None, "expires_at"),
)

stored_files = Table(
    "stored_files",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("sender_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("recipient_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("blob_path", Text, nullable=False),  # relative to the data directory
    Column("state", String(16), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index(None, "recipient_id", "state"),
    Index(None, "expires_at"),
)

relay_allocations = Table(  # server/relay_store.py: grant ids and bind keys, never secrets
    "relay_allocations",
    metadata,
    Column("call_id", String(64), primary_key=True),  # no foreign key: a relay may see only this
    Column("caller_grant", LargeBinary(16), nullable=False, unique=True),
    Column("caller_key", LargeBinary(32), nullable=False),
    Column("caller_address", String(200), nullable=True),  # JSON [host, port, ...]
    Column("caller_counter", BigInteger, nullable=False),
    Column("callee_grant", LargeBinary(16), nullable=False, unique=True),
    Column("callee_key", LargeBinary(32), nullable=False),
    Column("callee_address", String(200), nullable=True),
    Column("callee_counter", BigInteger, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index(None, "expires_at"),
)
