"""Schema revisions of the embedded conditions database, oldest first by ``down_revision``."""
