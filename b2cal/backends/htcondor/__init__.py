"""The HTCondor backend: collector jobs as one cluster per submission, through HTCondor's Python
bindings (the ``htcondor`` wheel; its module is ``htcondor2``, ``import htcondor`` fails).

One ``Schedd.submit`` with item data per submission (a cluster whose procs are the jobs, like a
Slurm array); one query per schedd and poll interval for the jobs still queued, and for those
that have left the queue their cluster's job event log, read on from where it stopped. Jobs run
in place on the shared filesystem (no file transfer), in their own folder, with an environment
b2cal spells out (never the submitter's: it holds database passwords), their stdout and stderr
in ``batch.out`` and ``batch.err`` there. Jobs outlive their driver: a restarted one picks them
up by the ``<schedd>#<cluster>.<proc>`` ids recorded in their folders.

The modules: :mod:`.options` (the site's ``[backend.options]``), :mod:`.description` (the
submit description), :mod:`.states` (a job ad in b2cal's states), :mod:`.eventlog` (job event
logs), :mod:`.schedd` (one schedd), :mod:`.backend` (the state machine).
"""

from __future__ import annotations

from b2cal.backends.base import Limits
from b2cal.backends.htcondor.backend import POLL_SECONDS, HTCondorBackend
from b2cal.backends.htcondor.description import item_data, submit_description
from b2cal.backends.htcondor.eventlog import reports_from_event_log
from b2cal.backends.htcondor.options import read_options, source_of
from b2cal.backends.htcondor.states import judge, report_from_ad
from b2cal.sites import BackendSettings

__all__ = [
    "HTCondorBackend",
    "item_data",
    "judge",
    "open_htcondor",
    "report_from_ad",
    "reports_from_event_log",
    "submit_description",
]


def open_htcondor(settings: BackendSettings) -> HTCondorBackend:
    """The HTCondor backend as a site configures it: ``[backend]`` limits, ``shared_roots``,
    ``[backend.resources]`` (``queue`` is the accounting group) and ``[backend.options]``
    (:class:`~b2cal.backends.htcondor.options.HTCondorOptions`), checked."""
    options = read_options(settings, source_of(settings))
    return HTCondorBackend(Limits.of(settings, POLL_SECONDS), options)
