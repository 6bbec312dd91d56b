"""TLS for b2cal's HTTPS API: the server's context that takes RFC 3820 proxies, the chain a
client presented, and the client's context for a user's proxy or certificate.

nginx cannot take proxy certificates, so scripts talk to an endpoint served by Python's
``ssl``. OpenSSL checks the chain up to a trusted CA during the handshake (proxies allowed);
a wrong CA or an expired certificate never gets a connection. What the handshake does not
decide — revocation, the proxy's own rules, the VOMS attributes — :func:`b2cal.auth.identity.
authenticate` decides from the whole chain the client sent, with a message that says why.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from b2cal.auth.trust import load_certificates
from b2cal.errors import B2CalError


def _load_cas(context: ssl.SSLContext, cas: Path) -> None:
    """The CAs of a bundle or of a folder in the grid's layout (the same reading as the
    trust store's, :func:`b2cal.auth.trust.load_certificates`)."""
    try:
        found = load_certificates([cas])
        for cert in found:
            context.load_verify_locations(cadata=cert.public_bytes(Encoding.PEM).decode())
    except ssl.SSLError as exc:
        raise B2CalError(f"cannot read the trusted CAs in {cas}: {exc}") from None
    if not found:
        raise B2CalError(f"no trusted CA certificate in {cas}")


def server_context(cert: Path, key: Path, cas: Path) -> ssl.SSLContext:
    """The API's context: its host certificate, client certificates required and checked
    against ``cas`` (a bundle or a folder of PEM files), proxy certificates allowed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise B2CalError(f"cannot load the API's certificate {cert} and key {key}: {exc}") from None
    _load_cas(context, cas)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    return context


def peer_chain(connection: ssl.SSLSocket) -> list[x509.Certificate]:
    """The certificates the client sent, leaf first (its proxies and its user certificate).

    Python 3.11 has no public call for the whole chain (``get_unverified_chain`` is public
    from 3.13); the private one of the same name is used, and without it only the leaf —
    which for a proxy is not enough, so :func:`authenticate` refuses it with a clear reason.
    """
    leaf_der = connection.getpeercert(binary_form=True)
    if not leaf_der:
        return []
    leaf = x509.load_der_x509_certificate(leaf_der)
    sslobj = getattr(connection, "_sslobj", None)
    chain_of = getattr(sslobj, "get_unverified_chain", None)
    sent = chain_of() if chain_of is not None else None
    chain = [x509.load_pem_x509_certificate(c.public_bytes().encode()) for c in sent or []]
    # OpenSSL leaves the leaf out of a server's view of the client chain in some versions.
    return chain if chain and chain[0] == leaf else [leaf, *chain]


def client_context(credential: Path, key: Path | None, cas: Path) -> ssl.SSLContext:
    """A client's context: its proxy (one file: proxy, key, the chain behind it) or user
    certificate and key, and the CAs the API's host certificate is checked against."""
    context = ssl.create_default_context()
    context.check_hostname = True
    _load_cas(context, cas)
    try:
        context.load_cert_chain(str(credential), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise B2CalError(f"cannot use the credential {credential}: {exc}") from None
    return context
