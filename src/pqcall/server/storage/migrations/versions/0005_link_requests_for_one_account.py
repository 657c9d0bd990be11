"""A link request may name the account it is for (issue 22): only that account reads or answers it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("link_requests") as batch:
        batch.add_column(sa.Column("username", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("link_requests") as batch:
        batch.drop_column("username")
