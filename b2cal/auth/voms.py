"""VOMS attribute certificates: the VO membership and roles a proxy carries.

A VOMS proxy holds, in the extension ``1.3.6.1.4.1.8005.100.100.5``, attribute certificates
(RFC 5755) signed by a VOMS server; each names its holder (the user certificate, by issuer and
serial), its validity and, in the attribute ``1.3.6.1.4.1.8005.100.100.4``, the FQANs such as
``/belle/Role=calibration/Capability=NULL``. An AC counts only if it is signed by a VOMS
server of the VO it speaks for (the site's *vomsdir*), is valid now, and is held by the very
user certificate of the chain; its FQANs must belong to that VO.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ObjectIdentifier

from b2cal.auth.certificates import VerifiedChain
from b2cal.auth.names import grid_dn
from b2cal.auth.oids import VOMS_ACS, VOMS_ATTRIBUTE
from b2cal.auth.trust import TrustStore
from b2cal.errors import NotAuthenticated

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class _ACSeq(core.SequenceOf):  # type: ignore[misc]
    _child_spec = cms.AttributeCertificateV2


class _ACSeqs(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _ACSeq


@dataclass(frozen=True)
class VomsAttributes:
    """What one verified AC says: the VO, the server that signed it, the FQANs, until when."""

    vo: str
    server: str
    fqans: tuple[str, ...]
    not_after: dt.datetime


def voms_attributes(
    chain: VerifiedChain, trust: TrustStore, vo: str, at: dt.datetime | None = None
) -> VomsAttributes | None:
    """The verified VOMS attributes of ``vo`` in the chain's proxies (None if it has no AC);
    NotAuthenticated if an AC is forged, expired, not the user's, from an unknown server or
    for another VO."""
    when = at or dt.datetime.now(dt.UTC)
    found = []
    for proxy in chain.proxies:
        try:
            value = proxy.extensions.get_extension_for_oid(ObjectIdentifier(VOMS_ACS)).value
        except x509.ExtensionNotFound:
            continue
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else value.public_bytes()
        try:
            acs = [ac for seq in _ACSeqs.load(raw) for ac in seq]
        except (ValueError, TypeError) as exc:
            raise NotAuthenticated(f"the proxy's VOMS extension cannot be read ({exc})") from None
        found.extend(acs)
    if not found:
        return None
    return _check(found[0], chain, trust, vo, when)


def _check(
    ac: cms.AttributeCertificateV2,
    chain: VerifiedChain,
    trust: TrustStore,
    vo: str,
    at: dt.datetime,
) -> VomsAttributes:
    try:
        info = ac["ac_info"]
        issuer = _directory_name(info["issuer"].chosen["issuer_name"])
        attributes = _fqans(info)
        not_before = info["att_cert_validity_period"]["not_before_time"].native
        not_after = info["att_cert_validity_period"]["not_after_time"].native
        holder = info["holder"]["base_certificate_id"]
        holder_issuer = _directory_name(holder["issuer"])
        holder_serial = holder["serial"].native
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise NotAuthenticated(f"the VOMS attribute certificate cannot be read ({exc})") from None
    ac_vo, fqans = attributes
    if ac_vo != vo:
        raise NotAuthenticated(f"the VOMS attributes are for VO {ac_vo!r}, not {vo!r}")
    servers = [s for s in trust.voms_servers.get(vo, []) if grid_dn(s.subject) == issuer]
    if not servers:
        raise NotAuthenticated(
            f"the VOMS attributes are signed by {issuer}, no VOMS server of {vo}"
        )
    if not any(_signed_by(ac, server) for server in servers):
        raise NotAuthenticated(
            f"the VOMS attribute certificate is not signed by {issuer} (forged?)"
        )
    server = servers[0]
    if not server.not_valid_before_utc <= at <= server.not_valid_after_utc:
        raise NotAuthenticated(f"the certificate of VOMS server {issuer} is not valid now")
    if at < not_before:
        raise NotAuthenticated(
            f"the VOMS attributes are not valid before {not_before:%Y-%m-%d %H:%M} UTC"
        )
    if at > not_after:
        raise NotAuthenticated(f"the VOMS attributes expired on {not_after:%Y-%m-%d %H:%M} UTC")
    user = chain.user
    # The holder is the user certificate, named by its serial and its issuer — or, as VOMS
    # servers and voms-proxy-fake write it, by its own subject.
    named = holder_issuer in (grid_dn(user.issuer), grid_dn(user.subject))
    if not named or holder_serial != user.serial_number:
        raise NotAuthenticated(
            f"the VOMS attributes are held by another certificate than {grid_dn(user.subject)}"
        )
    strays = [f for f in fqans if not (f == f"/{vo}" or f.startswith(f"/{vo}/"))]
    if strays:
        raise NotAuthenticated(f"the VOMS attributes hold FQANs of another VO: {', '.join(strays)}")
    return VomsAttributes(vo, issuer, tuple(fqans), not_after)


def _directory_name(names: asn1_x509.GeneralNames) -> str:
    """The grid DN of the first directory name among ``names``."""
    for general in names:
        if general.name == "directory_name":
            return grid_dn(_name(general.chosen))
    raise ValueError("no directory name")


def _name(name: asn1_x509.Name) -> x509.Name:
    """An asn1crypto Name as cryptography's, attribute by attribute, in its order."""
    return x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(
                        ObjectIdentifier(pair["type"].dotted), str(pair["value"].native)
                    )
                    for pair in rdn
                ]
            )
            for rdn in name.chosen
        ]
    )


def _fqans(info: cms.AttributeCertificateInfoV2) -> tuple[str, list[str]]:
    """The VO (from the policy authority ``vo://host:port``) and the FQANs."""
    for attribute in info["attributes"]:
        if attribute["type"].dotted != VOMS_ATTRIBUTE:
            continue
        for value in attribute["values"]:
            syntax = value.parse(cms.IetfAttrSyntax) if isinstance(value, core.Any) else value
            authority = syntax["policy_authority"]
            uri = next(
                (g.chosen.native for g in authority if g.name == "uniform_resource_identifier"), ""
            )
            vo = uri.split("://", 1)[0]
            fqans = [v.chosen.native.decode() if isinstance(v.chosen.native, bytes)
                     else str(v.chosen.native) for v in syntax["values"]]  # fmt: skip
            return vo, fqans
    raise ValueError("no VOMS attribute in the attribute certificate")


def _signed_by(ac: cms.AttributeCertificateV2, server: x509.Certificate) -> bool:
    algorithm = ac["signature_algorithm"]
    signature = ac["signature"].native
    tbs = ac["ac_info"].dump()
    hash_name = algorithm.hash_algo
    if hash_name not in _HASHES:
        return False
    key = server.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, tbs, padding.PKCS1v15(), _HASHES[hash_name]())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, tbs, ec.ECDSA(_HASHES[hash_name]()))
        else:
            return False
    except InvalidSignature:
        return False
    return True
