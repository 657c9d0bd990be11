"""Events: a ``seq`` that is never reused on SQLite, and an index for retention.

On SQLite an ``INTEGER PRIMARY KEY`` without ``AUTOINCREMENT`` takes the
largest rowid plus one, so once a phone acknowledged (deleted) the newest
events, the next event got a ``seq`` the phone had already seen, and a
resume skipped it. ``AUTOINCREMENT`` makes SQLite remember the largest ``seq``
ever used. PostgreSQL's sequence never reuses a value: only the index is new
there.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # recreate the table (SQLite cannot alter a primary key); rows are copied
        with op.batch_alter_table(
            "events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    op.create_index("ix_events_created_at", "events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_events_created_at", table_name="events")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("events", recreate="always"):
            pass
