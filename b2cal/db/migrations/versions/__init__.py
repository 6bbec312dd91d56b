"""Schema revisions of b2cal's state database, oldest first by ``down_revision``."""
