"""Checking a client's certificate chain: a user certificate, or RFC 3820 proxies of one.

The user certificate (the *end-entity certificate*) is verified against the trusted CAs with
``cryptography``'s verifier, relaxed where grid certificates differ from the web's (they carry
no SubjectAltName), and against its CA's CRL. ``cryptography`` cannot verify proxy chains, so
each proxy hop is checked by hand, as RFC 3820 says: issued and signed by the certificate
before it, its subject that certificate's subject plus one CN, a ProxyCertInfo extension,
valid now, and never a CA. Its policy decides what it may do: ``inheritAll`` acts with the
user's rights, Globus's *limited* proxy only reads, and any other (``independent``, which
inherits no rights, or a policy language b2cal does not know) is refused. Every name in the
chain must read as itself in the grid's slash form (:func:`b2cal.auth.names.check_unambiguous`).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID, ObjectIdentifier
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from b2cal.auth.names import check_unambiguous, grid_dn
from b2cal.auth.oids import (
    POLICY_INDEPENDENT,
    POLICY_INHERIT_ALL,
    POLICY_LIMITED,
    PROXY_CERT_INFO,
)
from b2cal.auth.trust import TrustStore
from b2cal.errors import NotAuthenticated

_PROXY = ObjectIdentifier(PROXY_CERT_INFO)


class ProxyPolicy(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 - asn1crypto's way of declaring a SEQUENCE
        ("policy_language", core.ObjectIdentifier),
        ("policy", core.OctetString, {"optional": True}),
    ]


class ProxyCertInfo(core.Sequence):  # type: ignore[misc]
    """RFC 3820's ProxyCertInfo: a path length limit and the proxy's policy."""

    _fields = [  # noqa: RUF012 - asn1crypto's way of declaring a SEQUENCE
        ("path_len_constraint", core.Integer, {"optional": True}),
        ("proxy_policy", ProxyPolicy),
    ]


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that passed: its user certificate, and the proxies on top (leaf first)."""

    user: x509.Certificate
    proxies: tuple[x509.Certificate, ...]
    #: A limited proxy is in the chain: the holder may read, not act.
    limited: bool = False
    #: When the proof ends: the first certificate of the chain, or CRL it was checked
    #: against, to expire (a kept-alive connection is judged again then).
    until: dt.datetime | None = None

    @property
    def dn(self) -> str:
        return grid_dn(self.user.subject)


def proxy_policy(cert: x509.Certificate) -> str:
    """The policy language (an OID) of a proxy's ProxyCertInfo; NotAuthenticated if it cannot
    be read."""
    extension = cert.extensions.get_extension_for_oid(_PROXY).value
    raw = extension.value if isinstance(extension, x509.UnrecognizedExtension) else b""
    try:
        info = ProxyCertInfo.load(raw)
        return str(info["proxy_policy"]["policy_language"].dotted)
    except (ValueError, TypeError, KeyError) as exc:
        raise NotAuthenticated(
            f"the ProxyCertInfo of proxy {grid_dn(cert.subject)} cannot be read ({exc})"
        ) from None


def _policy_limits(proxy: x509.Certificate) -> bool:
    """Whether the proxy is limited (True) or acts fully (False); NotAuthenticated for a
    policy that gives it no rights or that b2cal cannot judge."""
    language = proxy_policy(proxy)
    if language == POLICY_INHERIT_ALL:
        return False
    if language == POLICY_LIMITED:
        return True
    who = grid_dn(proxy.subject)
    if language == POLICY_INDEPENDENT:
        raise NotAuthenticated(f"proxy {who} is independent: it inherits none of its user's rights")
    raise NotAuthenticated(f"proxy {who} has a policy language b2cal does not know ({language})")


def is_proxy(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(_PROXY)
    except x509.ExtensionNotFound:
        return False
    return True


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """Certificates of a PEM bundle, leaf first (NotAuthenticated if there are none)."""
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise NotAuthenticated(f"no readable certificate ({exc})") from None
    return chain


def verify_chain(
    chain: Sequence[x509.Certificate], trust: TrustStore, at: dt.datetime | None = None
) -> VerifiedChain:
    """The chain (leaf first) as verified, or NotAuthenticated saying why not."""
    when = at or dt.datetime.now(dt.UTC)
    if not chain:
        raise NotAuthenticated("no certificate was presented")
    proxies: list[x509.Certificate] = []
    index = 0
    while index < len(chain) and is_proxy(chain[index]):
        proxies.append(chain[index])
        index += 1
    if index == len(chain):
        raise NotAuthenticated("a proxy without the certificate it was made from")
    user, intermediates = chain[index], list(chain[index + 1 :])
    for cert in chain:
        check_unambiguous(cert.subject, f"the certificate {grid_dn(cert.subject)}")
    limited = False
    for number, proxy in enumerate(proxies):
        _check_proxy(proxy, chain[number + 1], when)
        limited = _policy_limits(proxy) or limited
    _check_validity(user, "the user certificate", when)
    crl_ends = _check_user(user, intermediates, trust, when)
    ends = [c.not_valid_after_utc for c in (*proxies, user)] + crl_ends
    return VerifiedChain(user, tuple(proxies), limited, min(ends))


def _check_validity(cert: x509.Certificate, what: str, at: dt.datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise NotAuthenticated(
            f"{what} {grid_dn(cert.subject)} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if at > cert.not_valid_after_utc:
        ended = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        raise NotAuthenticated(f"{what} {grid_dn(cert.subject)} expired on {ended}")


def _check_proxy(proxy: x509.Certificate, issuer: x509.Certificate, at: dt.datetime) -> None:
    who = grid_dn(proxy.subject)
    if proxy.issuer != issuer.subject:
        raise NotAuthenticated(f"proxy {who} was not issued by {grid_dn(issuer.subject)}")
    rdns = list(proxy.subject.rdns)
    last = rdns[-1] if rdns else None
    if (
        last is None
        or x509.Name(rdns[:-1]) != issuer.subject
        or [a.oid for a in last] != [NameOID.COMMON_NAME]
    ):
        raise NotAuthenticated(f"proxy {who} is not named after its issuer plus one CN")
    try:
        constraints = proxy.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise NotAuthenticated(f"proxy {who} claims to be a CA")
    except x509.ExtensionNotFound:
        pass
    try:
        proxy.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise NotAuthenticated(
            f"proxy {who} is not signed by its issuer ({exc or 'bad signature'})"
        ) from None
    _check_validity(proxy, "proxy", at)


def _check_user(
    user: x509.Certificate,
    intermediates: list[x509.Certificate],
    trust: TrustStore,
    at: dt.datetime,
) -> list[dt.datetime]:
    """Checks the user certificate's path to a trusted CA and its CRLs; returns when the
    path's certificates and CRLs stop being valid."""
    who = grid_dn(user.subject)
    verifier = (
        PolicyBuilder()
        .store(Store(trust.cas))
        .time(at)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=ExtensionPolicy.permit_all(),  # grid user certificates have no SAN
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(user, intermediates)
    except VerificationError as exc:
        raise NotAuthenticated(
            f"the certificate {who} is not issued by a trusted CA ({exc})"
        ) from None
    path = list(verified.chain)  # leaf first, the trusted root last
    ends = [c.not_valid_after_utc for c in path]
    for cert, issuer in itertools.pairwise(path):
        crl = trust.crl_for(issuer, at)
        if crl is None:
            if trust.require_crls:
                raise NotAuthenticated(f"no CRL of {grid_dn(issuer.subject)} is at hand")
            continue
        if crl.next_update_utc is not None:
            ends.append(crl.next_update_utc)
        if crl.next_update_utc is not None and crl.next_update_utc < at:
            raise NotAuthenticated(
                f"the CRL of {grid_dn(issuer.subject)} expired on "
                f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC"
            )
        revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is not None:
            raise NotAuthenticated(
                f"the certificate {grid_dn(cert.subject)} was revoked on "
                f"{revoked.revocation_date_utc:%Y-%m-%d %H:%M} UTC"
            )
    return ends
