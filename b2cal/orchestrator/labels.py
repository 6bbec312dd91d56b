"""Names and tags that make the Prefect UI readable, and let b2cal find a request's runs.

Flow runs cannot be filtered by their parameters on the server, so every run of a request
carries tags (``request:17``, ``kind:prompt``, ``site:bnl``, ``exp:1``, ``bucket:3``,
``calib:ChannelT0``), and its name says what it is (``ChannelT0 · e1 bucket 3``). Artifacts
are named alike (``request-17-channelt0-validation``, "Request 17 · e1 bucket 3 · ...").
"""

from __future__ import annotations

import re

from b2cal.db import discovery
from b2cal.db.database import StateDatabase
from b2cal.db.model import Bucket, Request


def bucket_of(db: StateDatabase, request: Request) -> Bucket | None:
    return discovery.bucket(db, request.bucket_id) if request.bucket_id is not None else None


def request_tags(request: Request, bucket: Bucket | None = None) -> list[str]:
    """The tags of every flow run of a request."""
    tags = [
        f"request:{request.id}",
        f"kind:{request.kind.value}",
        f"site:{request.site}",
        f"exp:{request.exp}",
    ]
    if bucket is not None:
        tags.append(f"bucket:{bucket.number}")
    return tags


def request_title(request: Request, bucket: Bucket | None = None) -> str:
    """``e1 bucket 3`` for a bucket's request, ``e1 r1-8 (request 17)`` otherwise."""
    if bucket is not None:
        return f"e{request.exp} bucket {bucket.number}"
    return f"e{request.exp} r{request.run_low}-{request.run_high} (request {request.id})"


def request_heading(request: Request, bucket: Bucket | None = None) -> str:
    """``Request 17 · e1 bucket 3`` (``Request 17 · e1 r1-8`` without a bucket): how an
    artifact's title and description name a request, number first, as people look it up."""
    where = (
        bucket.label
        if bucket is not None
        else f"e{request.exp} r{request.run_low}-{request.run_high}"
    )
    return f"Request {request.id} · {where}"


def artifact_key(*parts: object) -> str:
    """A Prefect artifact key from ``parts`` (``request-17-channelt0-validation``): Prefect
    allows only lowercase letters, digits and dashes, so everything else becomes a dash (runs
    of them one). The same parts give the same key, so a run made again adds a version of its
    artifact instead of a new one."""
    words = (re.sub(r"[^a-z0-9]+", "-", str(part).lower()).strip("-") for part in parts)
    key = "-".join(word for word in words if word)
    if not key:
        raise ValueError(f"no artifact key in {parts!r}")
    return key
