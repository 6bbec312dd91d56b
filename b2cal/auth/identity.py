"""Who is acting: a DN and, from a VOMS proxy, the FQANs of the site's VO.

Browsers present user certificates to nginx, which verifies them and passes the DN on; scripts
present their certificate or an RFC 3820 proxy with VOMS attributes to b2cal's API, which
verifies the chain itself (:func:`authenticate`). The command line on a site's own machine acts
as its local account. Roles follow from the identity (:mod:`b2cal.auth.policy`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509

from b2cal.auth.certificates import verify_chain
from b2cal.auth.trust import TrustStore
from b2cal.auth.voms import voms_attributes


@dataclass(frozen=True)
class Identity:
    dn: str
    fqans: tuple[str, ...] = ()
    #: How it was proven: ``certificate`` (a user certificate), ``proxy`` (a VOMS proxy),
    #: ``local`` (an account of the site's machine).
    via: str = "certificate"
    #: Proven by a limited proxy: it may read, never act.
    limited: bool = False
    #: When the proof ends (the first of its certificates, CRLs and VOMS attributes to expire);
    #: whoever keeps an identity past a request judges it again then.
    until: dt.datetime | None = field(default=None, compare=False)
    #: The certificate (PEM) that proved it, for whoever must judge it again later (a
    #: dashboard session, at each action); never sent anywhere.
    proof: bytes | None = field(default=None, compare=False, repr=False)


def authenticate(
    chain: Sequence[x509.Certificate], trust: TrustStore, vo: str, at: dt.datetime | None = None
) -> Identity:
    """The identity a client chain proves (leaf first), or NotAuthenticated saying why not."""
    verified = verify_chain(chain, trust, at)
    if not verified.proxies:
        return Identity(verified.dn, until=verified.until)
    attributes = voms_attributes(verified, trust, vo, at)
    until = verified.until
    if attributes is not None and until is not None:
        until = min(until, attributes.not_after)
    fqans = attributes.fqans if attributes else ()
    return Identity(verified.dn, fqans, "proxy", verified.limited, until)
