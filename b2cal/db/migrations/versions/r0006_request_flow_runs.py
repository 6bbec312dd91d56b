"""Every flow run that processed a request, one row each (``state_request_flow_run``), so
that a flow run that made its request finds it again after a crash.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Filled from the flow run each request records now (its latest); earlier ones were not kept.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "state_request_flow_run",
        sa.Column("flow_run_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["state_request.id"],
            name=op.f("fk_state_request_flow_run_request_id_state_request"),
        ),
        sa.PrimaryKeyConstraint("flow_run_id", name=op.f("pk_state_request_flow_run")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(
        op.f("ix_state_request_flow_run_request_id"), "state_request_flow_run", ["request_id"]
    )
    op.execute(
        "INSERT INTO state_request_flow_run (flow_run_id, request_id, recorded) "
        "SELECT flow_run_id, id, updated FROM state_request WHERE flow_run_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_state_request_flow_run_request_id"), "state_request_flow_run")
    op.drop_table("state_request_flow_run")
