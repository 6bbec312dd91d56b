"""Where a request's calibrations run: ``placement`` (calibration -> site) for those that do
not run at the request's site.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Nullable, so that existing requests need no default written into them: no placement is the
same as an empty one (every calibration at the request's site).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("state_request", sa.Column("placement", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("state_request") as batch:
        batch.drop_column("placement")
