"""b2cal's Panel dashboard: calibration-level views over the state database, the conditions
database and the Prefect API, with actions gated by certificates and roles (README.md)."""
