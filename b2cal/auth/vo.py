"""The members of the VO and their roles, as the VO's registry lists them.

Two sources are read:

* **b2cal's JSON format**: any endpoint that serves (a VO export, a DIRAC dump, a file on a web
  server)::

      {"vo": "belle",
       "members": [{"dn": "/DC=org/DC=terena/CN=Ada Lovelace", "name": "Ada Lovelace",
                    "email": "ada@kek.jp", "roles": ["/belle", "/belle/Role=calibration"]}]}

  ``dn`` in the grid form or RFC 4514; ``roles`` are FQANs (or group paths), mapped to grants by
  the site like the FQANs of a VOMS proxy; ``name`` and ``email`` may be left out.
* **INDIGO IAM's SCIM API** (what replaced VOMS-Admin): ``GET <iam>/scim/Users`` page by page
  (``startIndex``, ``count``), with a bearer token with the ``scim:read`` scope. A user's DNs
  are the ``subjectDn`` of the certificates in the ``urn:indigo-dc:scim:schemas:IndigoUser``
  part of the record; its groups (``display``: ``belle/calibration``) become ``/belle/
  calibration``; suspended users (``active: false``) are not members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from b2cal.auth.names import normalise_dn
from b2cal.errors import B2CalError

INDIGO_USER = "urn:indigo-dc:scim:schemas:IndigoUser"


@dataclass(frozen=True)
class VoMember:
    dn: str
    name: str = ""
    email: str = ""
    #: FQANs or group paths (``/belle/Role=calibration``, ``/belle/calibration``).
    roles: tuple[str, ...] = ()


def parse_members(doc: Any, source: str) -> list[VoMember]:
    """Members from b2cal's JSON format; B2CalError naming the first bad entry."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("members"), list):
        raise B2CalError(f"{source} is not a VO member list: it needs a 'members' list")
    members = []
    for number, entry in enumerate(doc["members"]):
        where = f"{source}: member {number}"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("dn"), str):
            raise B2CalError(f"{where} has no 'dn'")
        roles = entry.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise B2CalError(f"{where}: 'roles' must be a list of FQANs")
        try:
            dn = normalise_dn(entry["dn"])
        except ValueError as exc:
            raise B2CalError(f"{where}: {entry['dn']!r} is not a DN ({exc})") from None
        members.append(
            VoMember(dn, str(entry.get("name", "")), str(entry.get("email", "")), tuple(roles))
        )
    return members


def parse_scim_users(resources: Sequence[Any], source: str) -> list[VoMember]:
    """Members from IAM's SCIM user records (one member per certificate DN)."""
    members = []
    for record in resources:
        if not isinstance(record, Mapping) or record.get("active") is False:
            continue
        extension = record.get(INDIGO_USER) or {}
        dns = [
            c.get("subjectDn") for c in extension.get("certificates", []) if isinstance(c, Mapping)
        ]
        groups = tuple(
            "/" + str(g["display"]).strip("/")
            for g in record.get("groups", [])
            if isinstance(g, Mapping) and g.get("display")
        )
        name = (record.get("name") or {}).get("formatted") or record.get("displayName") or ""
        emails = [e.get("value") for e in record.get("emails", []) if isinstance(e, Mapping)]
        for dn in dns:
            if not isinstance(dn, str) or not dn:
                continue
            try:
                grid = normalise_dn(dn)
            except ValueError:
                raise B2CalError(
                    f"{source}: user {record.get('userName')!r} has a bad DN {dn!r}"
                ) from None
            members.append(VoMember(grid, str(name), str(emails[0] if emails else ""), groups))
    return members
