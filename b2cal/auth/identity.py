"""Who is acting: a DN and, from a VOMS proxy, the FQANs of the site's VO.

Browsers present user certificates to nginx, which verifies them and passes the DN on; scripts
present their certificate or an RFC 3820 proxy with VOMS attributes to b2cal's API, which
verifies the chain itself (:func:`authenticate`). The command line on a site's own machine acts
as its local account. Roles follow from the identity (:mod:`b2cal.auth.policy`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

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


def authenticate(
    chain: Sequence[x509.Certificate], trust: TrustStore, vo: str, at: dt.datetime | None = None
) -> Identity:
    """The identity a client chain proves (leaf first), or NotAuthenticated saying why not."""
    verified = verify_chain(chain, trust, at)
    if not verified.proxies:
        return Identity(verified.dn)
    attributes = voms_attributes(verified, trust, vo, at)
    return Identity(verified.dn, attributes.fqans if attributes else (), "proxy")
