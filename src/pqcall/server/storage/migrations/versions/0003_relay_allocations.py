"""Relay allocations: what a restarted relay (or a separate ``pqcall relay``) needs.

One row per relayed call (:mod:`pqcall.server.relay_store`): per party the grant id
and bind key (not the grant secret), the address it proved and its highest bind
counter; the wall-clock expiry. No foreign key to ``calls``: a relay process on its
own database URL sees only this table.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "relay_allocations",
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("caller_grant", sa.LargeBinary(16), nullable=False),
        sa.Column("caller_key", sa.LargeBinary(32), nullable=False),
        sa.Column("caller_address", sa.String(200), nullable=True),
        sa.Column("caller_counter", sa.BigInteger, nullable=False),
        sa.Column("callee_grant", sa.LargeBinary(16), nullable=False),
        sa.Column("callee_key", sa.LargeBinary(32), nullable=False),
        sa.Column("callee_address", sa.String(200), nullable=True),
        sa.Column("callee_counter", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", name="pk_relay_allocations"),
        sa.UniqueConstraint("caller_grant", name="uq_relay_allocations_caller_grant"),
        sa.UniqueConstraint("callee_grant", name="uq_relay_allocations_callee_grant"),
    )
    op.create_index("ix_relay_allocations_expires_at", "relay_allocations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_relay_allocations_expires_at", table_name="relay_allocations")
    op.drop_table("relay_allocations")
