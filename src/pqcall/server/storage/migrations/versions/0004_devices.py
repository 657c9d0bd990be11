"""Accounts with several devices (issue 22): device lists, devices, per-device acks, linking.

- ``accounts`` gains the stored signed device list, its version and the recovery key's
  public half;
- ``devices``: one row per device of the account's current list; every existing account
  gets one, its first device, whose key is the account's identity (device id =
  SHA-256 of the encoded key, first 16 bytes), so accounts made before keep working;
- ``tokens.device_id``: the device a token was issued to (old rows: none);
- ``event_acks``: which device acknowledged which event, for accounts of several devices
  (an event goes once every device has it);
- ``link_requests``: the rendezvous of a new device and an existing one
  (``pqcall.server.link_rendezvous``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

FIRST_DEVICE_NAME = "first device"


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("device_list", sa.LargeBinary(), nullable=True))
        batch.add_column(
            sa.Column("device_list_version", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("recovery_key", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("device_id", sa.LargeBinary(16), nullable=True))
    devices = op.create_table(
        "devices",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("added_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_devices_account_id_accounts"
        ),
        sa.PrimaryKeyConstraint("account_id", "device_id", name="pk_devices"),
    )
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "event_acks",
        sa.Column("seq", big_id, nullable=False),
        sa.Column("device_id", sa.LargeBinary(16), nullable=False),
        sa.ForeignKeyConstraint(
            ["seq"], ["events.seq"], name="fk_event_acks_seq_events", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("seq", "device_id", name="pk_event_acks"),
    )
    op.create_table(
        "link_requests",
        sa.Column("link_id", sa.String(32), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("poll_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("answered_by", sa.Integer(), nullable=True),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["answered_by"], ["accounts.id"], name="fk_link_requests_answered_by_accounts"
        ),
        sa.PrimaryKeyConstraint("link_id", name="pk_link_requests"),
    )
    op.create_index("ix_link_requests_client", "link_requests", ["client"])
    op.create_index("ix_link_requests_expires_at", "link_requests", ["expires_at"])
    # every existing account: its identity becomes its first device
    connection = op.get_bind()
    existing = connection.execute(sa.text("SELECT id, identity, created_at FROM accounts")).all()
    rows = [
        {
            "account_id": account_id,
            "device_id": hashlib.sha256(bytes(identity)).digest()[:16],
            "name": FIRST_DEVICE_NAME,
            "public_key": bytes(identity),
            "added_at": created_at,
        }
        for account_id, identity, created_at in existing
    ]
    if rows:
        op.bulk_insert(devices, rows)
    for row in rows:  # tokens of before were issued to the account key: the first device
        connection.execute(
            sa.text("UPDATE tokens SET device_id = :device WHERE account_id = :account"),
            {"device": row["device_id"], "account": row["account_id"]},
        )


def downgrade() -> None:
    op.drop_index("ix_link_requests_expires_at", table_name="link_requests")
    op.drop_index("ix_link_requests_client", table_name="link_requests")
    op.drop_table("link_requests")
    op.drop_table("event_acks")
    op.drop_table("devices")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("device_id")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("recovery_key")
        batch.drop_column("device_list_version")
        batch.drop_column("device_list")
