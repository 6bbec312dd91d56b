"""Who a browser is, as the TLS front (nginx) vouches — or, for development, who the
dashboard was told to take every request for.

Behind a site's nginx the dashboard listens on a Unix socket that only nginx's group may open:
the socket's file mode, not an address or a shared secret, is what keeps other programs of
the machine from speaking for nginx. Every connection on it is nginx's, so the identity
headers nginx sets are believed there: the verification outcome of ``ssl_verify_client`` and
the user certificate itself (``$ssl_client_escaped_cert``). The dashboard verifies that
certificate again (CA, validity, CRL, a name that reads as itself): nginx reads its CRL only at
start and reload, and a session may outlive a certificate, so :func:`again` judges it at each
action of an open session.

Over TCP (``b2cal dashboard --user DN``, development on loopback) nothing vouches for any
header: a request carrying identity headers is refused, and every other request is the
named development user.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from urllib.parse import unquote

from b2cal.auth.certificates import load_chain
from b2cal.auth.identity import Identity, authenticate
from b2cal.auth.names import normalise_dn
from b2cal.auth.trust import TrustStore
from b2cal.errors import NotAuthenticated

#: The headers nginx sets (deployments/nginx/b2cal-dashboard.conf): the outcome of
#: ``ssl_verify_client`` and the user certificate (PEM, URL-escaped).
VERIFY_HEADER = "X-SSL-Client-Verify"
CERT_HEADER = "X-SSL-Client-Cert"
#: A header earlier fronts sent (the DN as text); nginx now clears it, and it is never read.
DN_HEADER = "X-SSL-Client-S-DN"
IDENTITY_HEADERS = (VERIFY_HEADER, CERT_HEADER, DN_HEADER)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def identity_from_front(
    headers: Mapping[str, str], trust: TrustStore, vo: str, at: dt.datetime | None = None
) -> Identity:
    """The identity of a request that came through the front (on the dashboard's socket),
    or NotAuthenticated saying why not. The identity keeps the certificate that proved it
    (``proof``), for :func:`again`."""
    verdict = _header(headers, VERIFY_HEADER)
    if verdict is None:
        raise NotAuthenticated(
            "no certificate identity: open the dashboard through its HTTPS front with your "
            "grid certificate"
        )
    if verdict != "SUCCESS":
        raise NotAuthenticated(f"the front did not verify the certificate ({verdict or 'none'})")
    escaped = _header(headers, CERT_HEADER)
    if not escaped:
        raise NotAuthenticated(
            f"the front verified a certificate but did not pass it on ({CERT_HEADER}: its "
            "nginx configuration is older than this dashboard)"
        )
    return again(Identity("", proof=unquote(escaped).encode()), trust, vo, at)


def again(
    identity: Identity, trust: TrustStore, vo: str, at: dt.datetime | None = None
) -> Identity:
    """``identity`` judged anew from the certificate that proved it (with the trust store as
    it is now: a CRL fetched since, an expiry); the development user stays who they are."""
    if identity.via == "local":
        return identity
    if identity.proof is None:
        raise NotAuthenticated("the identity carries no certificate to judge it by")
    chain = load_chain(identity.proof)
    proven = authenticate(chain, trust, vo, at)
    return Identity(
        proven.dn, proven.fqans, proven.via, proven.limited, proven.until, identity.proof
    )


def identity_over_tcp(headers: Mapping[str, str], local_user: str | None) -> Identity:
    """The identity of a request to the development server (TCP on loopback): the named
    user, and never anyone an identity header names."""
    sent = [h for h in IDENTITY_HEADERS if _header(headers, h) is not None]
    if sent:
        raise NotAuthenticated(
            f"identity headers ({', '.join(sent)}) over TCP: the dashboard takes them only "
            "from its nginx front, on its Unix socket"
        )
    if local_user is None:
        raise NotAuthenticated("no user: the development server needs --user DN")
    return Identity(normalise_dn(local_user), (), "local")
