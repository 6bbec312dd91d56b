"""A write racing a state change of its tag, on every SQL database (``sql_store``).

A second connection opens a transaction that holds the tag's row (``SELECT ... FOR UPDATE`` on
PostgreSQL and MariaDB; ``BEGIN IMMEDIATE`` on SQLite, which locks the whole database) and
changes the tag's state. The write is started in a thread meanwhile and waits for that lock;
then the transaction commits. The write must be decided on the state as committed: an upload
into a tag made RUNNING meanwhile is refused, and so is a promotion whose staging tag was opened
again and changed. Had the write checked the state before it took the lock (as b2cal once did),
it would have gone through.

Whichever comes first, the write reaching the lock or the commit, the outcome must be the same;
the test waits for the write to be queued on the lock only so that it tests the race at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection

from b2cal.cdb.embedded import EmbeddedStore
from b2cal.cdb.model import TagState
from b2cal.cdb.operations import promote, upload
from b2cal.core.iov import ExpRun, IoV
from b2cal.core.localdb import write_local_database
from b2cal.errors import ForbiddenChange

#: How a database shows transactions that wait for a lock, counted in the current database.
_LOCK_WAITS = {
    "postgresql": (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ),
    "mysql": (
        "SELECT count(*) FROM information_schema.innodb_trx t "
        "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
        "WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"
    ),
}
#: How often to look. InnoDB refreshes its transaction table only after 0.1 s without readers.
_POLL = 0.2
#: SQLite shows no waiting writer: once the write is about to take the lock, give it this long.
_SQLITE_GRACE = 0.2


class Blocker:
    """A transaction on a second connection that holds one tag's row until :meth:`commit`."""

    def __init__(self, store: EmbeddedStore, tag: str) -> None:
        self.store = store
        self.dialect = store.engine.dialect.name
        self._engine = create_engine(store.url, isolation_level="AUTOCOMMIT")
        self._connection = self._engine.connect()
        self._watcher = self._engine.connect()  # sees lock waits outside the transaction
        self._writing = threading.Event()
        self._committed = False
        if self.dialect == "sqlite":
            event.listen(store.engine, "before_cursor_execute", self._seen)
            self.execute("BEGIN IMMEDIATE")
        else:
            self.execute("BEGIN")
            self.execute("SELECT id FROM cdb_global_tag WHERE name = :tag FOR UPDATE", tag=tag)

    def _seen(self, _connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        """SQLite: the store is about to take the write lock (its BEGIN IMMEDIATE)."""
        if statement.startswith("BEGIN IMMEDIATE"):
            self._writing.set()

    def execute(self, statement: str, **params: Any) -> None:
        self._connection.execute(text(statement), params)

    def wait_for(self, write: Future[Any]) -> None:
        """Until ``write`` waits for this transaction's lock (or has ended without waiting)."""
        deadline = time.monotonic() + 60
        while not write.done() and time.monotonic() < deadline:
            if self._queued():
                return

    def _queued(self) -> bool:
        if self.dialect == "sqlite":
            if self._writing.wait(_POLL):
                time.sleep(_SQLITE_GRACE)  # into sqlite3's busy wait
                return True
            return False
        time.sleep(_POLL)
        return bool(self._watcher.execute(text(_LOCK_WAITS[self.dialect])).scalar())

    def commit(self) -> None:
        self.execute("COMMIT")
        self._committed = True

    def close(self) -> None:
        """Roll back if not committed (a write waiting for the lock goes on), disconnect."""
        if self.dialect == "sqlite":
            event.remove(self.store.engine, "before_cursor_execute", self._seen)
        if not self._committed:
            self.execute("ROLLBACK")
        self._connection.close()
        self._watcher.close()
        self._engine.dispose()


@contextmanager
def racing(
    store: EmbeddedStore, tag: str, change: list[str], write: Callable[[], Any]
) -> Iterator[Future[Any]]:
    """Run ``write`` in a thread while a transaction holding ``tag`` makes ``change``
    (SQL statements), committed once the write waits for it. Yields the write's future."""
    pool = ThreadPoolExecutor(1)
    blocker = Blocker(store, tag)
    try:
        for statement in change:
            blocker.execute(statement, tag=tag)
        future = pool.submit(write)
        blocker.wait_for(future)
        blocker.commit()
        future.exception(timeout=60)
        yield future
    finally:
        blocker.close()
        pool.shutdown()


def refusal(future: Future[Any]) -> str:
    """The ForbiddenChange a write ended with."""
    error = future.exception()
    assert isinstance(error, ForbiddenChange), f"the write was not refused: {future.result()}"
    return str(error)


def outputdb(directory: Path, iovs: list[IoV]) -> Path:
    write_local_database(directory, [("T0", iov, {"value": i}) for i, iov in enumerate(iovs)])
    return directory


STATE = "UPDATE cdb_global_tag SET state = '{}' WHERE name = :tag"


def test_an_upload_into_a_tag_made_running_meanwhile_is_refused(
    sql_store: EmbeddedStore, tmp_path: Path
) -> None:
    sql_store.create_tag("staging")
    output = outputdb(tmp_path / "out", [IoV(1, 0, -1, -1)])
    with racing(
        sql_store,
        "staging",
        [STATE.format("RUNNING")],
        lambda: upload(sql_store, output, "staging"),
    ) as write:
        assert "changes only by promotion" in refusal(write)
    assert sql_store.tag("staging").state is TagState.RUNNING
    assert sql_store.iovs("staging") == []


def test_a_promotion_whose_staging_tag_is_reopened_and_changed_meanwhile_is_refused(
    sql_store: EmbeddedStore, tmp_path: Path
) -> None:
    for tag, iovs in [("running", [IoV(1, 0, -1, -1)]), ("staging", [IoV(1, 10, -1, -1)])]:
        sql_store.create_tag(tag)
        upload(sql_store, outputdb(tmp_path / tag, iovs), tag)
    sql_store.set_state("running", TagState.RUNNING)
    for state in (TagState.TESTING, TagState.VALIDATED):
        sql_store.set_state("staging", state)
    before = sql_store.iovs("running")
    reopen_and_empty = [
        STATE.format("OPEN"),
        "DELETE FROM cdb_payload_iov WHERE tag_id = "
        "(SELECT id FROM cdb_global_tag WHERE name = :tag)",
    ]
    with racing(
        sql_store,
        "staging",
        reopen_and_empty,
        lambda: promote(sql_store, "staging", "running", ExpRun(1, 10)),
    ) as write:
        assert "only a VALIDATED tag is promoted" in refusal(write)
    assert sql_store.iovs("running") == before
    assert sql_store.iovs("staging") == []
