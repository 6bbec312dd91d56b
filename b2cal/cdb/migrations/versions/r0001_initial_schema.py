"""Initial schema: global tags, payloads, payload IoVs.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Tables on MariaDB use the binary utf8mb4 collation so that names compare exactly, as they do on
PostgreSQL and SQLite. Revisions spell out the schema as it was when they were written; they do
not import the models, which move on.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "cdb_global_tag",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cdb_global_tag")),
        sa.UniqueConstraint("name", name=op.f("uq_cdb_global_tag_name")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        "cdb_payload",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cdb_payload")),
        sa.UniqueConstraint("name", "checksum", name=op.f("uq_cdb_payload_name_checksum")),
        sa.UniqueConstraint("name", "revision", name=op.f("uq_cdb_payload_name_revision")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        "cdb_payload_iov",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("payload_id", sa.Integer(), nullable=False),
        sa.Column("exp_low", sa.Integer(), nullable=False),
        sa.Column("run_low", sa.Integer(), nullable=False),
        sa.Column("exp_high", sa.Integer(), nullable=False),
        sa.Column("run_high", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["payload_id"],
            ["cdb_payload.id"],
            name=op.f("fk_cdb_payload_iov_payload_id_cdb_payload"),
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["cdb_global_tag.id"], name=op.f("fk_cdb_payload_iov_tag_id_cdb_global_tag")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cdb_payload_iov")),
        sa.UniqueConstraint(
            "tag_id",
            "payload_id",
            "exp_low",
            "run_low",
            name=op.f("uq_cdb_payload_iov_tag_id_payload_id_exp_low_run_low"),
        ),
        **_MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_cdb_payload_iov_payload_id"), "cdb_payload_iov", ["payload_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_cdb_payload_iov_payload_id"), table_name="cdb_payload_iov")
    op.drop_table("cdb_payload_iov")
    op.drop_table("cdb_payload")
    op.drop_table("cdb_global_tag")
