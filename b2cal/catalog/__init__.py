"""Data discovery, pure: file naming, scanning a storage element, reading and checking input
files. Persistence of what was found belongs to the state database, not here."""
