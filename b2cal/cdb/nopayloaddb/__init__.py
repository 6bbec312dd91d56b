"""A conditions database held by a nopayloaddb server, spoken to over its REST API.

nopayloaddb (the HSF reference conditions database) keeps global tags, payload types, payload
lists and payload IoVs under ``/api/cdb_rest/``; it stores payload *URLs*, not payload bytes.
This package makes such a server a :class:`~b2cal.cdb.store.ConditionsStore`, so a site points
b2cal at its production conditions database by configuration only (``B2CAL_CDB_URL``,
``B2CAL_CDB_TOKEN``). ``docs/nopayloaddb.md`` says the same for operators.

* :mod:`~b2cal.cdb.nopayloaddb.mapping`: how b2cal's IoVs, tag states and payloads are held
  in the server's (major/minor IoVs with exclusive ends, statuses plus state records, payload
  URLs), and the names the server takes.
* :mod:`~b2cal.cdb.nopayloaddb.rest`: the HTTP layer; every failure is a one-line
  :class:`~b2cal.cdb.nopayloaddb.rest.NopayloaddbError`.
* :mod:`~b2cal.cdb.nopayloaddb.payload_directory`: the payload files and their provenance, in
  a directory every client of the server shares.
* :mod:`~b2cal.cdb.nopayloaddb.bookkeeping`: the exact state of every tag, kept on the server
  in a bookkeeping global tag.
* :mod:`~b2cal.cdb.nopayloaddb.writes`: writes as several idempotent requests, around the
  server's bugs, complete per payload name and completed by a retry after a crash.
* :mod:`~b2cal.cdb.nopayloaddb.store`: :class:`~b2cal.cdb.nopayloaddb.store.RestStore`, the
  store itself.

The server bugs worked around were observed on a real server; ``tests/fake_nopayloaddb.py``
mimics them.
"""
