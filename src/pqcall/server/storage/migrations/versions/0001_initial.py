"""Initial schema: accounts, key bundles, tokens, challenges, calls, events, stored files.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("identity", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("last_seen_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("username", name="uq_accounts_username"),
    )
    op.create_table(
        "key_bundles",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("bundle", sa.LargeBinary(), nullable=False),
        sa.Column("bundle_created", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_key_bundles"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_key_bundles_account_id_accounts"
        ),
    )
    op.create_index(
        "ix_key_bundles_account_id_is_current", "key_bundles", ["account_id", "is_current"]
    )
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_tokens"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_tokens_account_id_accounts"
        ),
    )
    op.create_index("ix_tokens_expires_at", "tokens", ["expires_at"])
    op.create_table(
        "challenges",
        sa.Column("challenge", sa.LargeBinary(32), nullable=False),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("challenge", name="pk_challenges"),
    )
    op.create_index("ix_challenges_expires_at", "challenges", ["expires_at"])
    op.create_table(
        "calls",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("caller_id", sa.Integer(), nullable=False),
        sa.Column("callee_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("offer", sa.LargeBinary(), nullable=True),
        sa.Column("answer", sa.LargeBinary(), nullable=True),
        sa.Column("confirm", sa.LargeBinary(), nullable=True),
        sa.Column("caller_candidates", sa.JSON(), nullable=False),
        sa.Column("callee_candidates", sa.JSON(), nullable=False),
        sa.Column("caller_seen_address", sa.Text(), nullable=True),
        sa.Column("callee_seen_address", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("answered_at", sa.Double(), nullable=True),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("ended_by", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
        sa.ForeignKeyConstraint(["caller_id"], ["accounts.id"], name="fk_calls_caller_id_accounts"),
        sa.ForeignKeyConstraint(["callee_id"], ["accounts.id"], name="fk_calls_callee_id_accounts"),
    )
    op.create_index("ix_calls_callee_id_state", "calls", ["callee_id", "state"])
    op.create_index("ix_calls_caller_id_state", "calls", ["caller_id", "state"])
    op.create_index("ix_calls_state_created_at", "calls", ["state", "created_at"])
    op.create_table(
        "events",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_events_account_id_accounts"
        ),
    )
    op.create_index("ix_events_account_id_seq", "events", ["account_id", "seq"])
    op.create_table(
        "stored_files",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("sender_id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("blob_path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stored_files"),
        sa.ForeignKeyConstraint(
            ["sender_id"], ["accounts.id"], name="fk_stored_files_sender_id_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["recipient_id"], ["accounts.id"], name="fk_stored_files_recipient_id_accounts"
        ),
    )
    op.create_index("ix_stored_files_recipient_id_state", "stored_files", ["recipient_id", "state"])
    op.create_index("ix_stored_files_expires_at", "stored_files", ["expires_at"])


def downgrade() -> None:
    for table in ("stored_files", "events", "calls", "challenges", "tokens", "key_bundles"):
        op.drop_table(table)
    op.drop_table("accounts")
