"""The collector jobs are kept in one place, the request's workspace (job folders written
atomically, status last), which ``b2cal jobs`` and the dashboard read: the state database's
copy, written after every batch and read by nothing, goes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("state_collector_job")


def downgrade() -> None:
    op.create_table(
        "state_collector_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("calibration_run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("batch_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["calibration_run_id"],
            ["state_calibration_run.id"],
            name=op.f("fk_state_collector_job_calibration_run_id_state_calibration_run"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_state_collector_job")),
        sa.UniqueConstraint(
            "calibration_run_id",
            "iteration",
            "number",
            name=op.f("uq_state_collector_job_calibration_run_id_iteration_number"),
        ),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
