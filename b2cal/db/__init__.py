"""b2cal's state database: files, runs, buckets, requests, calibration runs, collector jobs,
sign-offs and the action log (:mod:`b2cal.db.database`, :mod:`b2cal.db.discovery`), and the
state model every part of b2cal shows (:mod:`b2cal.db.states`)."""
