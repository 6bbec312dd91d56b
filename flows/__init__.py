"""b2cal's Prefect flows: thin orchestration over ``b2cal`` (no physics, no SQL).

Each module is one flow (``prefect.yaml`` deploys each to every site's work pool); what they do
lives in :mod:`b2cal.processing`, :mod:`b2cal.db` and the engine's steps (:mod:`b2cal.caf.steps`).
"""
