"""The user registry: people by DN, their VO membership and grants.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "state_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dn_key", sa.String(length=64), nullable=False),
        sa.Column("dn", sa.Text(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("in_vo", sa.Boolean(), nullable=False),
        sa.Column("vo_grants", sa.JSON(), nullable=False),
        sa.Column("extra_grants", sa.JSON(), nullable=False),
        sa.Column("synced", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_state_user")),
        sa.UniqueConstraint("dn_key", name=op.f("uq_state_user_dn_key")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("state_user")
