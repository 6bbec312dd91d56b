"""Processing requests: made, started, cancelled, rerun, skipped and signed off
(``operations``); a request's run at its site (``run``); the calibrations deferred to where
they are placed (``deferred``). Prefect is reached through :mod:`b2cal.orchestrator`."""
