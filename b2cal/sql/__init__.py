"""SQL engines, transactions, error mapping and schema migrations shared by b2cal's databases.

Used by the conditions database (``b2cal.cdb``) and b2cal's state database; the engine, the
catalog and the backends never touch SQL (``make lint`` checks this with import-linter).
"""
