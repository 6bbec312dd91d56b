"""A bucket whose request was cancelled on purpose is HELD (it waits for a person), no longer
CLOSED with the fact kept only in its requests' message text.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

The state column takes the new value as it is (plain text). Buckets CLOSED now with a request
that was not one that failed to start (whose message said so) become HELD: the last time that
text is read.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: The message of a request that could not be started (b2cal.requests.operations).
NOT_STARTED = "cancelled: its process-request run could not be created"


def upgrade() -> None:
    op.execute(
        "UPDATE state_bucket SET state = 'HELD' WHERE state = 'CLOSED' AND EXISTS ("
        "SELECT 1 FROM state_request r WHERE r.bucket_id = state_bucket.id "
        f"AND (r.message IS NULL OR r.message <> '{NOT_STARTED}'))"
    )


def downgrade() -> None:
    op.execute("UPDATE state_bucket SET state = 'CLOSED' WHERE state = 'HELD'")
