"""The action gateway: what a person asks of b2cal, checked against the policy of roles and
logged before the request lifecycle acts (the HTTPS API and the dashboard act through it)."""
