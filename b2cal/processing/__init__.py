"""Processing requests: what the flows do, as functions of b2cal's records and files.

A request's workspace (:mod:`.area`), its preparation (input files from the state database,
input tags exported from the conditions database, the staging tag, the engine's plan:
:mod:`.preparation`), validation of a calibration's payloads (:mod:`.validation`) and the
upload of approved calibrations into the staging tag (:mod:`.upload`). The Prefect flows in
``flows/`` call these and the engine's steps; nothing here knows Prefect.
"""
