"""A worker process of the local backend: ``python -m b2cal.backends.local_worker FD PARENT
NICENESS``.

The driver (:mod:`b2cal.backends.local`) starts it as a plain interpreter rather than through
``multiprocessing``'s ``spawn``, which makes every child import the parent's ``__main__``
module first: in a Prefect flow-run process that is ``prefect.engine`` (all of Prefect), about
a second of CPU per worker before its first job, on machines where the collection is starting
at the same moment. Here a worker imports only what its jobs need.

It talks to its driver through the connection on file descriptor FD: first the driver's
``sys.path`` and the targets to import, then jobs, one at a time; it replies with how each
ended. It exits when told to (None), when the connection closes, or when its driver is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from b2cal.backends.launch import call, resolve

#: How often a worker checks that the driver that started it is still there.
PARENT_CHECK_SECONDS = 0.5
#: Exit status of a worker whose driver died.
ORPHANED = 70


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_SECONDS)
            if os.getppid() != parent:
                os._exit(ORPHANED)  # the driver is gone: nobody will collect our result

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()


def _preload(targets: Sequence[str]) -> None:
    for target in targets:
        try:
            resolve(target)
        except Exception:
            continue


def serve(conn: Connection, parent: int, niceness: int) -> None:
    """Run the jobs sent through ``conn`` one after the other, until told to stop.

    Ctrl-C and SIGTERM are the driver's to handle (a batch system signals every process of a
    job, a terminal every process of its group): it stops the workers itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # jobs yield to their driver, whose work is short
        os.nice(niceness)
    _watch_parent(parent)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        kind, *body = message
        if kind == "path":  # the driver's import path, as spawn would have set it
            sys.path[:] = body[0]
            continue
        if kind == "preload":
            _preload(body[0])
            continue
        job_id, target, directory = body
        try:
            status = call(target, Path(directory))
            reply = (job_id, status == 0, "" if status == 0 else f"exit status {status}")
        except BaseException as exc:  # the job failed, not the worker
            text = " ".join(str(exc).split())[:300]
            reply = (job_id, False, f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
        conn.send(reply)


def main(argv: Sequence[str]) -> int:
    fd, parent, niceness = (int(a) for a in argv)
    serve(Connection(fd), parent, niceness)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
