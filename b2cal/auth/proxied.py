"""Who a browser is, as the TLS front (nginx) vouches: identity headers, trusted only from
the front's own addresses.

nginx verifies the user certificate (CAs, CRLs, validity), drops whatever identity headers the
client sent and sets its own. The dashboard behind it must still refuse those headers from
anybody else — a client reaching the app directly could otherwise name any DN — so the
decision takes the address of the connection's peer (the socket's, never a forwarded-for
header a client could write) and the list of trusted proxy addresses.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence

from b2cal.auth.identity import Identity
from b2cal.auth.names import normalise_dn
from b2cal.errors import NotAuthenticated

#: The headers nginx sets (deployments/nginx/b2cal-dashboard.conf): the verification outcome
#: of ``ssl_verify_client`` and the subject DN (RFC 4514) of the verified certificate.
VERIFY_HEADER = "X-SSL-Client-Verify"
DN_HEADER = "X-SSL-Client-S-DN"
IDENTITY_HEADERS = (VERIFY_HEADER, DN_HEADER)
#: The secret the front adds when one is configured: an address alone cannot tell nginx from
#: another program of the same machine, which could connect from that address too.
SECRET_HEADER = "X-B2CAL-Front"


def _trusted(peer: str, proxies: Sequence[str]) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    for entry in proxies:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def identity_from_front(
    headers: Mapping[str, str],
    peer: str,
    trusted_proxies: Sequence[str],
    local_user: str | None = None,
    secret: str | None = None,
) -> Identity:
    """The identity of a dashboard request, or NotAuthenticated saying why not.

    ``local_user``: the development server's named user (``b2cal dashboard --user``), which
    only ever listens on loopback; it is who every request is, unless a trusted front says
    otherwise. ``secret``: the front's shared secret (``B2CAL_FRONT_SECRET``), if configured,
    which identity headers must come with.
    """
    sent = [h for h in IDENTITY_HEADERS if _header(headers, h) is not None]
    if sent and not _trusted(peer, trusted_proxies):
        raise NotAuthenticated(
            f"identity headers ({', '.join(sent)}) from {peer}, which is not a trusted proxy"
        )
    if sent and secret is not None:
        given = _header(headers, SECRET_HEADER) or ""
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise NotAuthenticated(
                f"identity headers from {peer} without the front's shared secret"
            )
    if not sent:
        if local_user is not None:
            return Identity(normalise_dn(local_user), (), "local")
        raise NotAuthenticated(
            "no certificate identity: open the dashboard through its HTTPS front with your "
            "grid certificate"
        )
    verdict = _header(headers, VERIFY_HEADER) or ""
    if verdict != "SUCCESS":
        raise NotAuthenticated(f"the front did not verify the certificate ({verdict or 'none'})")
    dn = (_header(headers, DN_HEADER) or "").strip()
    if not dn:
        raise NotAuthenticated("the front verified a certificate but passed no DN")
    try:
        return Identity(normalise_dn(dn), (), "certificate")
    except ValueError as exc:
        raise NotAuthenticated(f"the front passed an unreadable DN {dn!r}: {exc}") from None
