"""b2cal's HTTPS API: what scripts and remote ``b2cal`` commands use to act at a site with a
grid certificate or a VOMS proxy (documented in docs/api.md)."""
