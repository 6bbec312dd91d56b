"""A conditions database held by a nopayloaddb server, spoken to over its REST API.

nopayloaddb (the HSF reference conditions database) keeps global tags, payload types, payload
lists and payload IoVs under ``/api/cdb_rest/``; it stores payload *URLs*, not payload bytes.
This module makes such a server a :class:`~b2cal.cdb.store.ConditionsStore`, so a site points
b2cal at its production conditions database by configuration only (``B2CAL_CDB_URL``,
``B2CAL_CDB_TOKEN``). ``docs/nopayloaddb.md`` says the same for operators.

Mapping
    * A b2cal global tag is a nopayloaddb global tag of the same name; a payload name is a
      payload type; a tag holds one payload list per payload type.
    * ``(exp, run)`` is ``(major, minor)``. nopayloaddb ends are exclusive, b2cal's inclusive:
      ``(exp_high, run_high)`` becomes the end ``(exp_high, run_high + 1)``; ``run_high = -1``
      ("to the end of exp_high") becomes ``(exp_high + 1, 0)``; an open-ended IoV is sent
      without an end (the server stores its largest integer there). See :func:`iov_to_server`.
    * A payload IoV's ``payload_url`` is ``<name>/rev_<revision>/<md5>``, the payload file's
      path in the payload directory, so it carries the revision; ``checksum`` is the md5.
    * States: OPEN is ``unlocked``, RUNNING is ``locked``, the four frozen states are
      ``frozen``. That loses information, and the server's global tag has no field that could
      keep the rest (its ``description`` column is not exposed by the API, ``author`` can be
      set only at creation). The exact state therefore lives on the same server, so that every
      site agrees: a bookkeeping global tag (:data:`STATE_TAG`) holds one payload type per
      b2cal tag, whose IoVs are state *records* ``"<from>><to>"`` (payload_url) with the tag's
      description (checksum field), appended with increasing major. See :func:`exact_state`.
    * Exclusive ends are the server's default ``CDB_IOV_MODE=continuous``; b2cal refuses to
      write to a server in ``discrete`` mode, whose trimming would give other IoVs.

Payload files
    The bytes live in a payload directory shared by every client of the server (a shared
    filesystem, or one exported read-only by a web server for the payload URLs):
    ``<dir>/<name>/rev_<revision>/<md5>`` plus ``provenance.json`` beside it (name, revision,
    checksum, size, creation time, provenance), which :meth:`RestStore.find_payloads` searches.
    A revision is claimed by renaming a complete staging folder into place, under a lock file,
    so a revision never exists half-written and the same constants never get two revisions.

Server bugs worked around (observed on a real server; ``tests/fake_nopayloaddb.py`` mimics them)
    * The lookup ``payloadiovs/`` returns the IoV with the latest start at or before the point,
      ignoring its end: :meth:`RestStore.lookup` checks the end itself.
    * ``piov_attach`` fails with an HTML 500 page when the new IoV starts before or inside
      existing ones, splits an open-ended IoV in two when a closed IoV is appended after it,
      and on a ``locked`` tag fails for nearly every append (or leaves the previous open-ended
      IoV open). b2cal's rules (:mod:`b2cal.cdb.rules`) decide every write first; the client
      then only ever attaches one IoV at the end of a list where the server does exactly what
      the rules planned, and otherwise builds a complete new payload list for that payload name
      off to the side and attaches it in one ``pl_attach`` (which atomically replaces the old
      list). A RUNNING (locked) tag is unlocked for that, and locked again right after.
    * ``bulk_piov`` drops checksum and end and skips every check: it is not used.
    * Many errors come back as HTML pages; every non-JSON or error answer becomes a one-line
      :class:`NopayloaddbError` naming the request and the HTTP status.
    * Paths must be exact: ``payloadiovs/`` needs its trailing slash, the others must not
      have one.

Crashes and retries
    A write is several HTTP requests, so it cannot be one transaction. Every step is
    idempotent and they are ordered so that nothing half-done is visible: payload files first
    (content-addressed), then payload types, then new payload lists built while attached to no
    tag, then one atomic attach per payload name. A crash can leave some payload names of a
    write done and others not, never part of one name's IoVs; running the same write again
    completes it without duplicates, since the rules skip IoVs already there. State changes
    write the state record before changing the server's status, and :func:`exact_state` reads
    an interrupted change as the state it came from (or, for RUNNING, as RUNNING while the tag
    is unlocked for an append); retrying the change completes it. Leftovers of an interrupted
    write (payload lists attached to no tag) are invisible and harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import quote, urlsplit

import httpx

from b2cal.caf.atomic_file import atomic_write_bytes, atomic_write_json
from b2cal.caf.iov import ExpRun, IoV
from b2cal.caf.localdb import md5sum
from b2cal.cdb.model import (
    CdbError,
    ChecksumMismatch,
    GlobalTag,
    NoPayloadValid,
    Payload,
    PayloadIoV,
    TagState,
    UnknownPayload,
    UnknownTag,
)
from b2cal.cdb.rules import IoVChange, apply, check_transition, plan_add, plan_remove
from b2cal.cdb.store import ConditionsStore, NewPayloadIoV
from b2cal.errors import B2CalError

#: Where the API sits under a server's root URL.
API_PATH: Final = "/api/cdb_rest/"
#: What nopayloaddb stores as the end of an open-ended IoV (its ``sys.maxsize``).
OPEN_END: Final = 2**63 - 1
#: The bookkeeping global tag that holds the exact b2cal state of every tag (see the module doc).
STATE_TAG: Final = "b2cal_tag_states"
#: Payload types of state records are this prefix plus the tag name.
STATE_TYPE_PREFIX: Final = "b2cal.state."
#: The server's limits on names (global tags, payload types) and free text fields.
_NAME_LIMIT = 80
_TEXT_LIMIT = 255
#: A lookup point later than any state record, to read the latest record of every tag at once.
_LATEST = 2**62

#: The columns of a lookup row, for servers that answer lists instead of dicts.
_ROW = (
    "payload_type_name",
    "payload_url",
    "checksum",
    "size",
    "major_iov",
    "minor_iov",
    "major_iov_end",
    "minor_iov_end",
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_OUR_URL = re.compile(r"(?P<name>[^/]+)/rev_(?P<revision>[0-9]+)/(?P<checksum>[0-9a-f]{32})")


# --- the mapping ------------------------------------------------------------------------------
class ServerIoV(NamedTuple):
    """An IoV as nopayloaddb holds it: a start and an exclusive end, ``None`` when open."""

    major: int
    minor: int
    major_end: int | None
    minor_end: int | None

    @property
    def end(self) -> tuple[int, int]:
        """The end as a comparable pair, open ends at the server's largest integer."""
        if self.major_end is None or self.minor_end is None:
            return (OPEN_END, OPEN_END)
        return (self.major_end, self.minor_end)

    def contains(self, point: ExpRun) -> bool:
        """Whether the run is inside, the way the server's numbers read (start <= p < end)."""
        return (self.major, self.minor) <= tuple(point) < self.end


def iov_to_server(iov: IoV) -> ServerIoV:
    """b2cal's inclusive IoV as nopayloaddb's half-open one (exp -> major, run -> minor)."""
    if iov.is_open_ended:
        return ServerIoV(iov.exp_low, iov.run_low, None, None)
    if iov.run_high == -1:
        return ServerIoV(iov.exp_low, iov.run_low, iov.exp_high + 1, 0)
    return ServerIoV(iov.exp_low, iov.run_low, iov.exp_high, iov.run_high + 1)


def iov_from_server(major: int, minor: int, major_end: int | None, minor_end: int | None) -> IoV:
    """The inverse of :func:`iov_to_server`; an end at the server's largest integer is open."""
    if major_end is None or minor_end is None or major_end >= OPEN_END:
        return IoV(major, minor, -1, -1)
    last = ExpRun(major_end, minor_end).previous()  # (E, 0) -> (E-1, -1): end of experiment
    try:
        return IoV(major, minor, last.exp, last.run)
    except B2CalError:
        raise CdbError(
            f"nopayloaddb IoV ({major},{minor}) to ({major_end},{minor_end}) has no b2cal "
            "equivalent (it ends before it starts)"
        ) from None


#: The nopayloaddb status that protects a tag in each state the way the server can.
STATUS_OF: Final[Mapping[TagState, str]] = {
    TagState.OPEN: "unlocked",
    TagState.TESTING: "frozen",
    TagState.VALIDATED: "frozen",
    TagState.PUBLISHED: "frozen",
    TagState.RUNNING: "locked",
    TagState.INVALID: "frozen",
}
#: Server statuses each state may be seen with. RUNNING tags are unlocked for a moment while
#: b2cal appends to them (the server refuses most appends to locked tags); b2cal still treats
#: them as RUNNING then, and locks them again after the append (or the next one, after a crash).
_SEEN_WITH: Final[Mapping[TagState, frozenset[str]]] = {
    state: frozenset({status, "unlocked"} if state is TagState.RUNNING else {status})
    for state, status in STATUS_OF.items()
}
#: The state of a tag without a usable state record (made by another tool, or its record lost).
#: A frozen tag nobody staged through b2cal is a released one.
_DEFAULT_STATE: Final[Mapping[str, TagState]] = {
    "unlocked": TagState.OPEN,
    "locked": TagState.RUNNING,
    "frozen": TagState.PUBLISHED,
}


@dataclass(frozen=True)
class StateRecord:
    """One state change of a tag, as kept in the bookkeeping tag: from, to, description."""

    before: TagState
    after: TagState
    description: str = ""
    #: The record's position in its tag's history (the major of its IoV).
    number: int = 0

    @property
    def url(self) -> str:
        return f"{self.before.value}>{self.after.value}"

    @classmethod
    def parse(cls, url: str, checksum: str, number: int) -> StateRecord | None:
        """The record kept in a payload IoV, or None if it is not one b2cal wrote."""
        try:
            before, after = (TagState(part) for part in url.split(">"))
            description = json.loads(checksum)
        except (ValueError, TypeError):
            return None
        return cls(before, after, description, number) if isinstance(description, str) else None


def exact_state(status: str, record: StateRecord | None) -> TagState:
    """A tag's b2cal state from its server status and its latest state record.

    The record is written before the status changes, so a record whose target the status does
    not match yet is an interrupted change: the tag is still in the state it came from.
    """
    if record is not None:
        if status in _SEEN_WITH[record.after]:
            return record.after
        if status in _SEEN_WITH[record.before]:
            return record.before
    return _DEFAULT_STATE.get(status, TagState.PUBLISHED)


def state_type(tag: str) -> str:
    """The payload type of a tag's state records (hashed if the name would be too long)."""
    name = STATE_TYPE_PREFIX + tag
    return name if len(name) <= _NAME_LIMIT else f"{STATE_TYPE_PREFIX}md5.{md5sum(tag.encode())}"


def payload_url(payload: Payload) -> str:
    """The payload_url b2cal gives a payload: its file's path in the payload directory."""
    return f"{payload.name}/rev_{payload.revision}/{payload.checksum}"


# --- HTTP -------------------------------------------------------------------------------------
class NopayloaddbError(CdbError):
    """A request the server refused or could not answer, in one line; ``status`` if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def api_root(base_url: str) -> str:
    """The API's URL from a server's root URL or the API URL itself (both are accepted)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CdbError(f"not a nopayloaddb URL: {base_url!r} (expected http(s)://host[:port])")
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH.rstrip("/")):
        path += API_PATH.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}/"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _detail(answer: Any) -> str:
    """What a JSON error answer says: DRF's ``detail``, or its per-field messages."""
    if isinstance(answer, dict):
        if "detail" in answer:
            return str(answer["detail"])
        return "; ".join(
            f"{key}: {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in answer.items()
        )
    return str(answer)


class NopayloaddbApi:
    """The server's REST API: JSON in and out, every failure a one-line NopayloaddbError.

    The bearer token goes on writes only: the server reads anonymously and, with JWT
    authentication configured, refuses writes without a valid token (HTTP 403).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.root = api_root(base_url)
        self._token = token
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=self.root, transport=transport, verify=verify, timeout=timeout
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> Any:
        """One request; its decoded JSON answer."""
        what = f"nopayloaddb {method} {path}"
        headers = {}
        if self._token is not None and method != "GET":
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._client.request(method, path, params=params, json=body, headers=headers)
        except httpx.TimeoutException:
            raise NopayloaddbError(
                f"{what}: no answer from {self.root} within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            reason = _one_line(str(exc) or type(exc).__name__)
            raise NopayloaddbError(f"{what}: cannot reach {self.root} ({reason})") from None
        return self._answer(what, response)

    @staticmethod
    def _answer(what: str, response: httpx.Response) -> Any:
        status = response.status_code
        is_json = "json" in response.headers.get("content-type", "")
        answer: Any = None
        if is_json:
            try:
                answer = response.json()
            except ValueError:
                is_json = False
        if status >= 400 or (300 <= status < 400):
            if is_json:
                reason = _one_line(_detail(answer))
            elif "location" in response.headers:
                reason = f"redirected to {response.headers['location']}"
            else:
                reason = "an error page, not JSON"
            raise NopayloaddbError(f"{what}: HTTP {status}: {reason}", status)
        if not is_json:
            kind = response.headers.get("content-type") or "no content type"
            raise NopayloaddbError(f"{what}: HTTP {status} but the answer is not JSON ({kind})")
        return answer

    def get(self, path: str, **params: str | int) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def _segment(name: str) -> str:
    return quote(name, safe="")


# --- payload files ------------------------------------------------------------------------------
def _check_name(kind: str, name: str) -> None:
    """Names become URL segments and folder names: keep them to what both take safely."""
    if not _SAFE_NAME.fullmatch(name) or len(name) > _NAME_LIMIT:
        raise CdbError(
            f"{kind} name {name!r} cannot be used with nopayloaddb: use at most "
            f"{_NAME_LIMIT} letters, digits and _ . + - (not starting with . + -)"
        )


def _json_object(value: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``value`` as JSON gives it back (tuples become lists); CdbError if it is not JSON."""
    try:
        result: dict[str, Any] = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise CdbError(f"provenance of payload {name} is not JSON: {exc}") from None
    return result


class PayloadDirectory:
    """Payload files of a nopayloaddb server: ``<root>/<name>/rev_<n>/`` holds ``<md5>`` and
    ``provenance.json``.

    nopayloaddb keeps only URLs; the files must be where every client of the server finds
    them, so this folder is shared by all of them (e.g. a shared filesystem). Files are
    immutable: a revision folder appears complete (renamed into place) or not at all.
    """

    SIDECAR: Final = "provenance.json"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._known: dict[tuple[str, int], Payload] = {}

    def file(self, payload: Payload) -> Path:
        return self.root / payload_url(payload)

    def payload(self, name: str, revision: int) -> Payload | None:
        """The stored payload of that revision, or None."""
        if (name, revision) in self._known:
            return self._known[(name, revision)]
        try:
            doc = json.loads((self.root / name / f"rev_{revision}" / self.SIDECAR).read_text())
            found = Payload(
                name,
                revision,
                str(doc["checksum"]),
                int(doc["size"]),
                dict(doc["provenance"]),
                datetime.fromisoformat(doc["created"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            folder = self.root / name / f"rev_{revision}"
            raise CdbError(f"unreadable payload record in {folder}: {exc}") from None
        self._known[(name, revision)] = found
        return found

    def revisions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name[4:]) for p in folder.glob("rev_*") if p.name[4:].isdigit() and p.is_dir()
        )

    def find(self, name: str, checksum: str) -> Payload | None:
        """The payload ``name`` with these bytes (the lowest revision, should there be two)."""
        for revision in self.revisions(name):
            if (self.root / name / f"rev_{revision}" / checksum).is_file():
                return self.payload(name, revision)
        return None

    def all(self, name: str | None = None) -> list[Payload]:
        names = (
            [name]
            if name is not None
            else sorted(
                p.name for p in self.root.glob("*") if p.is_dir() and not p.name.startswith(".")
            )
        )
        found = (self.payload(n, r) for n in names for r in self.revisions(n))
        return [p for p in found if p is not None]

    def put(self, name: str, data: bytes, provenance: dict[str, Any]) -> Payload:
        """Store the payload unless it is there; either way, the stored payload."""
        checksum = md5sum(data)
        folder = self.root / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with self._locked(folder):
                stored = self.find(name, checksum)
                if stored is not None:
                    return stored
                return self._claim(folder, name, data, checksum, provenance)
        except OSError as exc:
            raise CdbError(f"cannot store payload {name} in {self.root}: {exc}") from exc

    def data(self, payload: Payload) -> bytes:
        path = self.file(payload)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UnknownPayload(
                f"payload file of {payload.name} revision {payload.revision} is not in the "
                f"payload directory {self.root} ({path}); every client of a nopayloaddb server "
                "must use the same payload directory"
            ) from None
        actual = md5sum(data)
        if actual != payload.checksum:
            raise ChecksumMismatch(
                f"payload file {path} of {payload.name} revision {payload.revision} was changed: "
                f"its checksum is {actual}, the conditions database says {payload.checksum}"
            )
        return data

    @staticmethod
    @contextlib.contextmanager
    def _locked(folder: Path) -> Iterator[None]:
        """Writers of one payload name take turns (one revision per content, numbered in order)."""
        with open(folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _claim(
        self, folder: Path, name: str, data: bytes, checksum: str, provenance: dict[str, Any]
    ) -> Payload:
        """Write a staging folder, then rename it to the next free ``rev_<n>`` (atomic)."""
        created = datetime.now(UTC)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
        try:
            atomic_write_bytes(staging / checksum, data)
            revision = (self.revisions(name) or [0])[-1] + 1
            while True:
                record = {
                    "name": name,
                    "revision": revision,
                    "checksum": checksum,
                    "size": len(data),
                    "created": created.isoformat(),
                    "provenance": provenance,
                }
                atomic_write_json(staging / self.SIDECAR, record)
                try:
                    os.rename(staging, folder / f"rev_{revision}")
                    break
                except OSError:  # taken by a writer without the lock (another host): next one
                    if not (folder / f"rev_{revision}").exists():
                        raise
                    revision += 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        payload = Payload(name, revision, checksum, len(data), provenance, created)
        self._known[(name, revision)] = payload
        return payload


# --- the store ----------------------------------------------------------------------------------
@dataclass
class _Tag:
    """A tag as read from the server: its b2cal value, server status, lists and IoVs."""

    tag: GlobalTag
    status: str
    record: StateRecord | None
    #: The payload list attached for each payload type.
    lists: dict[str, str] = field(default_factory=dict)
    entries: list[PayloadIoV] = field(default_factory=list)
    #: payload_url of each (name, checksum) as the server has it (kept as is when copying).
    urls: dict[tuple[str, str], str] = field(default_factory=dict)


def _created(text: Any) -> datetime | None:
    """Server times are naive UTC (Django with USE_TZ off and TIME_ZONE UTC)."""
    if not isinstance(text, str):
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _by_name_and_start(entries: list[PayloadIoV]) -> list[PayloadIoV]:
    return sorted(entries, key=lambda e: (e.payload.name, e.iov.first))


class RestStore(ConditionsStore):
    """A :class:`ConditionsStore` on a nopayloaddb server (module doc: mapping, workarounds).

    ``base_url`` is the server (``https://cdb.example.org``) or its API
    (``…/api/cdb_rest/``). ``token`` is sent as a bearer token on writes. ``payloads`` is the
    payload directory every client of this server shares (default: ``nopayloaddb/`` under
    b2cal's payload directory, ``B2CAL_CDB_PAYLOADS``). ``transport`` replaces httpx's (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 30.0,
        payloads: Path | None = None,
        state_tag: str = STATE_TAG,
    ) -> None:
        if payloads is None:
            from b2cal.settings import Settings

            payloads = Settings().cdb_payload_dir / "nopayloaddb"
        self.api = NopayloaddbApi(
            base_url, token=token, transport=transport, verify=verify, timeout=timeout
        )
        self.files = PayloadDirectory(payloads)
        self.state_tag = state_tag
        self._mode_checked = False

    def __repr__(self) -> str:
        return f"RestStore({self.api.root!r}, payloads={str(self.files.root)!r})"

    def close(self) -> None:
        self.api.close()

    # --- reading ------------------------------------------------------------------------------
    def _server_tag(self, name: str, light: bool) -> dict[str, Any]:
        if name == self.state_tag:
            raise UnknownTag(f"unknown global tag {name!r} (b2cal's own bookkeeping tag)")
        try:
            path = f"globalTag/{_segment(name)}"
            answer: dict[str, Any] = self.api.get(path, light=1) if light else self.api.get(path)
        except NopayloaddbError as exc:
            if exc.status == 404:
                raise UnknownTag(f"unknown global tag {name!r}") from None
            raise
        return answer

    def _records(self) -> dict[str, StateRecord]:
        """The latest state record of every tag, by record type, in one request."""
        rows = self._lookup_rows(self.state_tag, ExpRun(_LATEST, 0))
        records = {}
        for row in rows:
            record = StateRecord.parse(row["payload_url"], row["checksum"], row["major_iov"])
            if record is not None:
                records[row["payload_type_name"]] = record
        return records

    def _value(self, doc: dict[str, Any], record: StateRecord | None) -> tuple[GlobalTag, str]:
        status = doc["status"]["name"] if isinstance(doc["status"], dict) else str(doc["status"])
        state = exact_state(status, record)
        description = record.description if record is not None else ""
        return GlobalTag(doc["name"], state, description, _created(doc.get("created"))), status

    def _read(self, name: str, contents: bool = True, state: bool = True) -> _Tag:
        """The tag, with its lists and IoVs if ``contents``, with its exact state if ``state``
        (one more request; without it the state is the server status's default)."""
        doc = self._server_tag(name, light=not contents)
        record = self._records().get(state_type(name)) if state else None
        tag, status = self._value(doc, record)
        view = _Tag(tag, status, record)
        for plist in doc.get("payload_lists", []) if contents else []:
            ptype = plist["payload_type"]
            view.lists[ptype] = plist["name"]
            for row in plist["payload_iov"]:
                payload = self._described(ptype, row["payload_url"], row["checksum"])
                view.urls.setdefault((ptype, payload.checksum), row["payload_url"])
                iov = iov_from_server(
                    row["major_iov"], row["minor_iov"], row["major_iov_end"], row["minor_iov_end"]
                )
                view.entries.append(PayloadIoV(name, payload, iov))
        view.entries = _by_name_and_start(view.entries)
        return view

    def _described(self, name: str, url: str, checksum: str) -> Payload:
        """The payload an IoV on the server points to, with size and provenance from its file.

        IoVs written by other tools (another URL form) get revision 0; their bytes are not in
        the payload directory.
        """
        match = _OUR_URL.fullmatch(url)
        if match is None or match["name"] != name:
            return Payload(name, 0, checksum, 0)
        revision = int(match["revision"])
        return self.files.payload(name, revision) or Payload(name, revision, checksum, 0)

    def _lookup_rows(self, tag: str, point: ExpRun) -> list[dict[str, Any]]:
        """The server's lookup: per payload type, the IoV with the latest start <= point.

        Rows come as dicts with ``shape=dict``; servers without that option answer lists in
        the order of their SQL query, which is read the same way.
        """
        rows = self.api.get(
            "payloadiovs/", gtName=tag, majorIOV=point.exp, minorIOV=point.run, shape="dict"
        )
        return [
            row if isinstance(row, dict) else dict(zip(_ROW, row, strict=False)) for row in rows
        ]

    def tags(self) -> list[GlobalTag]:
        records = self._records()
        found = [
            self._value(doc, records.get(state_type(doc["name"])))[0]
            for doc in self.api.get("globalTags")
            if doc["name"] != self.state_tag
        ]
        return sorted(found, key=lambda t: t.name)

    def tag(self, name: str) -> GlobalTag:
        return self._read(name, contents=False).tag

    def iovs(self, tag: str, name: str | None = None) -> list[PayloadIoV]:
        entries = self._read(tag, state=False).entries
        return [e for e in entries if name is None or e.payload.name == name]

    def lookup(self, tags: Sequence[str], name: str, exprun: ExpRun) -> PayloadIoV:
        """The server's lookup, with the end of the IoV it returns checked here.

        The server answers the IoV with the latest start at or before the run even when it
        ended before that run. IoVs of one payload name never overlap in a tag (b2cal's rules;
        the server trims them too), so when that IoV has ended, none holds the run.
        """
        for tag in tags:
            self._server_tag(tag, light=True)  # an unknown tag in the chain is an error
            for row in self._lookup_rows(tag, exprun):
                if row["payload_type_name"] != name:
                    continue
                server = ServerIoV(
                    row["major_iov"], row["minor_iov"], row["major_iov_end"], row["minor_iov_end"]
                )
                if server.contains(exprun):
                    payload = self._described(name, row["payload_url"], row["checksum"])
                    return PayloadIoV(tag, payload, iov_from_server(*server))
        raise NoPayloadValid(
            f"no payload {name} valid at experiment {exprun.exp} run {exprun.run} in "
            f"global tag{'s' if len(tags) > 1 else ''} {', '.join(tags)}"
        )

    def payload(self, name: str, revision: int) -> Payload:
        found = self.files.payload(name, revision) if _SAFE_NAME.fullmatch(name) else None
        if found is None:
            raise UnknownPayload(f"unknown payload {name!r} revision {revision}")
        return found

    def payload_data(self, payload: Payload) -> bytes:
        return self.files.data(payload)

    def find_payloads(self, name: str | None = None, **provenance: Any) -> list[Payload]:
        if name is not None and not _SAFE_NAME.fullmatch(name):
            return []
        wanted = _json_object(provenance, name or "query")
        missing = object()
        found = [
            p
            for p in self.files.all(name)
            if all(p.provenance.get(key, missing) == value for key, value in wanted.items())
        ]
        return sorted(found, key=lambda p: (p.name, p.revision))

    # --- global tags ------------------------------------------------------------------------
    def _absent(self, name: str) -> None:
        _check_name("global tag", name)
        if name == self.state_tag:
            raise CdbError(f"global tag name {name!r} is b2cal's bookkeeping tag on this server")
        try:
            self._server_tag(name, light=True)
        except UnknownTag:
            return
        raise CdbError(f"global tag {name!r} exists already")

    def create_tag(self, name: str, description: str = "") -> GlobalTag:
        self._absent(name)
        record = StateRecord(TagState.OPEN, TagState.OPEN, description)
        self._record(name, record)
        doc = self.api.post(
            "gt", {"name": name, "status": STATUS_OF[TagState.OPEN], "author": "b2cal"}
        )
        return self._value(doc, record)[0]

    def clone_tag(self, source: str, target: str, description: str = "") -> GlobalTag:
        self._server_tag(source, light=True)
        self._absent(target)
        record = StateRecord(TagState.OPEN, TagState.OPEN, description)
        self._record(target, record)
        doc = self.api.post(f"cloneGlobalTag/{_segment(source)}/{_segment(target)}")
        return self._value(doc, record)[0]

    def set_state(self, name: str, state: TagState) -> GlobalTag:
        view = self._read(name, contents=False)
        current = view.tag
        if current.state is not state or view.status == STATUS_OF[state]:
            check_transition(current, state)
            self._record(name, StateRecord(current.state, state, current.description), view.record)
        if view.status != STATUS_OF[state]:  # also completes a change a crash interrupted
            self._set_status(name, STATUS_OF[state])
        return GlobalTag(name, state, current.description, current.created)

    def _set_status(self, name: str, status: str) -> None:
        self.api.put(f"gt_change_status/{_segment(name)}/{status}")

    def _record(self, tag: str, record: StateRecord, last: StateRecord | None = None) -> None:
        """Append a state record for ``tag`` to the bookkeeping tag (creating what it needs).

        One ``piov_attach`` makes it visible. ``last`` (the latest record, if known) saves the
        requests that make sure the bookkeeping tag and the tag's list exist.
        """
        if len(json.dumps(record.description)) > _TEXT_LIMIT:
            raise CdbError(
                f"description of global tag {tag!r} is too long for nopayloaddb "
                f"(at most about {_TEXT_LIMIT - 10} characters)"
            )
        ptype = state_type(tag)
        lists: dict[str, str] = self.api.get(f"gtPayloadLists/{_segment(self.state_tag)}")
        if ptype not in lists:
            self._ensure_state_tag()
            self._ensure_type(ptype)
            plist = self.api.post("pl", {"payload_type": ptype})["name"]
            self.api.put("pl_attach", {"payload_list": plist, "global_tag": self.state_tag})
            lists[ptype] = plist
        if last is None:
            last = self._records().get(ptype)
        number = last.number + 1 if last is not None else 1
        piov = self.api.post(
            "piov",
            {
                "payload_url": record.url,
                "checksum": json.dumps(record.description),
                "major_iov": number,
                "minor_iov": 0,
            },
        )
        self.api.put("piov_attach", {"payload_list": lists[ptype], "piov_id": piov["id"]})

    def _ensure_state_tag(self) -> None:
        try:
            self.api.get(f"globalTag/{_segment(self.state_tag)}", light=1)
        except NopayloaddbError as exc:
            if exc.status != 404:
                raise
            self._create_if_absent("gt", {"name": self.state_tag, "status": "unlocked"})

    def _ensure_type(self, name: str) -> None:
        self._create_if_absent("pt", {"name": name})

    def _create_if_absent(self, path: str, body: dict[str, str]) -> None:
        """POST a named object; one that exists already (HTTP 400 saying so) is fine."""
        try:
            self.api.post(path, body)
        except NopayloaddbError as exc:
            if exc.status != 400 or "already exists" not in str(exc):
                raise

    # --- payload IoVs ---------------------------------------------------------------------------
    def write_iovs(self, tag: str, entries: Sequence[NewPayloadIoV]) -> IoVChange:
        checked = []
        for entry in entries:
            _check_name("payload", entry.name)
            provenance = _json_object(entry.provenance, entry.name)
            checked.append((entry, entry.verified_checksum(), provenance))
        view = self._read(tag)
        wanted = []
        for entry, checksum, provenance in checked:
            stored = self.files.find(entry.name, checksum)
            # Not stored yet: revision 0 until the rules accept the write (then it is stored).
            wanted.append(
                (stored or Payload(entry.name, 0, checksum, len(entry.data), provenance), entry.iov)
            )
        change = plan_add(view.tag, view.entries, wanted)
        if change.empty:
            self._relock(view)  # a retry after a crash while the tag was unlocked
            return change
        self._check_iov_mode()
        # Store new payloads in the order of the entries, as revisions are numbered.
        adding = {(p.name, p.checksum) for p, _ in change.add}
        stored_now: dict[tuple[str, str], Payload] = {}
        for entry, checksum, provenance in checked:
            key = (entry.name, checksum)
            if key in adding and key not in stored_now:
                stored_now[key] = self.files.put(entry.name, entry.data, provenance)
        change = IoVChange(
            close=change.close,
            remove=change.remove,
            add=[(stored_now[(p.name, p.checksum)], iov) for p, iov in change.add],
        )
        self._apply(view, change)
        return change

    def remove_iovs(self, tag: str, entries: Sequence[PayloadIoV]) -> IoVChange:
        view = self._read(tag)
        change = plan_remove(view.tag, view.entries, entries)
        if not change.empty:
            self._check_iov_mode()
            self._apply(view, change)
        return change

    def _apply(self, view: _Tag, change: IoVChange) -> None:
        """Carry out a change the rules accepted: invisible preparations, then one atomic step
        per payload name (a single appended IoV, or a whole new list replacing the old one)."""
        after = apply(view.entries, view.tag.name, change)
        names = sorted(
            {p.name for p, _ in change.add}
            | {old.payload.name for old, _ in change.close}
            | {e.payload.name for e in change.remove}
        )
        urls = dict(view.urls)
        urls.update({(p.name, p.checksum): payload_url(p) for p, _ in change.add})
        for name in names:
            if name not in view.lists:
                self._ensure_type(name)
        steps: list[tuple[str, PayloadIoV | None, str | None]] = []
        for name in names:
            single = self._single_append(view, change, name)
            if single is not None:
                steps.append((name, single, None))
            else:
                mine = [e for e in after if e.payload.name == name]
                steps.append((name, None, self._build_list(name, mine, urls)))
        with self._writable(view, unlock=any(name in view.lists for name in names)):
            for name, single, plist in steps:
                if single is not None:
                    self._attach(view.lists[name], single, urls)
                else:
                    self.api.put("pl_attach", {"payload_list": plist, "global_tag": view.tag.name})

    def _check_iov_mode(self) -> None:
        """Refuse to write to a server whose IoV ends are not exclusive (``CDB_IOV_MODE``).

        The mapping and the trimming the client relies on are those of the default mode,
        ``continuous``; in ``discrete`` mode the server trims ends differently. The server
        shows its ``CDB_*`` settings (HTTP 404 for one left at its default); servers too old to
        have that endpoint only know continuous IoVs.
        """
        if self._mode_checked:
            return
        try:
            mode = self.api.get("user_settings/CDB_IOV_MODE/").get("CDB_IOV_MODE", "continuous")
        except NopayloaddbError as exc:
            if exc.status != 404:
                raise
            mode = "continuous"
        if mode != "continuous":
            raise CdbError(
                f"nopayloaddb at {self.api.root} runs with CDB_IOV_MODE={mode}; b2cal writes "
                "only to servers in the default mode, continuous (exclusive IoV ends)"
            )
        self._mode_checked = True

    @staticmethod
    def _single_append(view: _Tag, change: IoVChange, name: str) -> PayloadIoV | None:
        """The one new IoV of ``name`` if attaching it to the tag's list does exactly the change.

        That holds when it starts after every IoV of its list and either the last one ends
        before it, or the last one is being closed by it and it is open-ended itself: the
        server then trims the last IoV to end where the new one starts. Anything else (an
        insert, several IoVs, a removal, a closed IoV after an open-ended one, which the server
        would split) goes through a new list.
        """
        added = [(p, iov) for p, iov in change.add if p.name == name]
        if name not in view.lists or len(added) != 1:
            return None
        if any(e.payload.name == name for e in change.remove):
            return None
        payload, iov = added[0]
        if any(e.iov.first >= iov.first for e in view.entries if e.payload.name == name):
            return None
        if any(old.payload.name == name for old, _ in change.close) and not iov.is_open_ended:
            return None
        return PayloadIoV(view.tag.name, payload, iov)

    def _build_list(
        self, name: str, entries: list[PayloadIoV], urls: dict[tuple[str, str], str]
    ) -> str:
        """A new payload list holding ``entries`` in start order, attached to no tag yet.

        Appending in start order to a list of no tag is what the server does right.
        """
        plist: str = self.api.post("pl", {"payload_type": name})["name"]
        for entry in sorted(entries, key=lambda e: e.iov.first):
            self._attach(plist, entry, urls)
        return plist

    def _attach(self, plist: str, entry: PayloadIoV, urls: dict[tuple[str, str], str]) -> None:
        server = iov_to_server(entry.iov)
        body: dict[str, Any] = {
            "payload_url": urls[(entry.payload.name, entry.payload.checksum)],
            "checksum": entry.payload.checksum,
            "major_iov": server.major,
            "minor_iov": server.minor,
        }
        if server.major_end is not None:
            body.update(major_iov_end=server.major_end, minor_iov_end=server.minor_end)
        piov = self.api.post("piov", body)
        self.api.put("piov_attach", {"payload_list": plist, "piov_id": piov["id"]})

    @contextlib.contextmanager
    def _writable(self, view: _Tag, unlock: bool) -> Iterator[None]:
        """Let the server take the change; for a RUNNING tag, unlock it for the moment.

        A locked tag refuses most appends (HTML 500) and replacing a list. Before unlocking, a
        state record saying RUNNING must exist, so that the tag still reads RUNNING while it is
        unlocked (or if this process dies then). It is locked again afterwards, also after an
        error, and by the next write or ``set_state`` if this process died first.
        """
        if view.tag.state is not TagState.RUNNING:
            yield
            return
        if unlock and view.status != "unlocked":
            if view.record is None or view.record.after is not TagState.RUNNING:
                running = StateRecord(TagState.RUNNING, TagState.RUNNING, view.tag.description)
                self._record(view.tag.name, running, view.record)
            self._set_status(view.tag.name, "unlocked")
            view.status = "unlocked"
        try:
            yield
        except BaseException:
            with contextlib.suppress(CdbError):  # the first error is the one to report
                self._relock(view)
            raise
        self._relock(view)

    def _relock(self, view: _Tag) -> None:
        """Lock a RUNNING tag that is unlocked (for an append, or left so by a crash)."""
        locked = STATUS_OF[TagState.RUNNING]
        if view.tag.state is TagState.RUNNING and view.status != locked:
            self._set_status(view.tag.name, locked)
            view.status = locked
