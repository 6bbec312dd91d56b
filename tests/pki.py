"""A test PKI made by the tests: a CA with its CRL, a foreign CA, user certificates of every
kind the dashboard must tell apart, a VOMS server certificate, RFC 3820 proxies and the VOMS
attribute certificates inside them. Everything is made with ``cryptography`` (the ACs with
``asn1crypto``) from the standards, so a test can make exactly the broken case it needs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from b2cal.auth.certificates import ProxyCertInfo
from b2cal.auth.oids import POLICY_INHERIT_ALL, PROXY_CERT_INFO, VOMS_ACS, VOMS_ATTRIBUTE

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
_KEY_CACHE: list[rsa.RSAPrivateKey] = []


def new_key() -> rsa.RSAPrivateKey:
    """An RSA key (2048 bits: what grid CAs still issue); keys are cheap to reuse in tests."""
    if len(_KEY_CACHE) < 12:
        _KEY_CACHE.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEY_CACHE[-1]
    _KEY_CACHE.append(_KEY_CACHE.pop(0))
    return _KEY_CACHE[-1]


def name(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


def grid_name(*cns: str, org: str = "b2cal-test") -> x509.Name:
    return name(
        (NameOID.DOMAIN_COMPONENT, "org"),
        (NameOID.DOMAIN_COMPONENT, org),
        *((NameOID.COMMON_NAME, cn) for cn in cns),
    )


@dataclass
class Issued:
    """A certificate, its key, and where both were written (PEM)."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path
    chain: tuple[x509.Certificate, ...] = ()  # the certificates between it and its CA

    def pem_chain(self) -> bytes:
        """The certificate, then its chain: what a client presents."""
        parts = [self.cert, *self.chain]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in parts)


def _write(
    folder: Path,
    label: str,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    chain: tuple[x509.Certificate, ...] = (),
) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{label}.pem", folder / f"{label}.key"
    issued = Issued(cert, key, cert_path, key_path, chain)
    cert_path.write_bytes(issued.pem_chain())
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return issued


class PKI:
    """The test PKI, written into ``folder``: ``ca.pem``, ``crl.pem``, a foreign CA, and
    ``vomsdir/<vo>/<server>.pem`` for the VOMS servers it runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = self._ca("ca", grid_name("b2cal Test CA"))
        self.rogue = self._ca("rogue-ca", grid_name("Rogue CA", org="elsewhere"))
        self.revoked: list[int] = []
        self.voms = self.host("voms.belle.test")
        self.write_crl()
        vomsdir = folder / "vomsdir" / "belle"
        vomsdir.mkdir(parents=True, exist_ok=True)
        (vomsdir / "voms.belle.test.pem").write_bytes(
            self.voms.cert.public_bytes(serialization.Encoding.PEM)
        )

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def crl_file(self) -> Path:
        return self.folder / "crl.pem"

    @property
    def vomsdir(self) -> Path:
        return self.folder / "vomsdir"

    def _ca(self, label: str, subject: x509.Name) -> Issued:
        key = new_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - 10 * DAY)
            .not_valid_after(NOW + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return _write(self.folder, label, cert, key)

    def _issue(
        self,
        label: str,
        subject: x509.Name,
        *,
        issuer: Issued,
        not_before: dt.datetime,
        not_after: dt.datetime,
        usage: x509.ObjectIdentifier,
        san: str | None = None,
    ) -> Issued:
        key = new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if san:
            names = [x509.DNSName(san), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(issuer.key, hashes.SHA256())
        return _write(self.folder / "issued", label, cert, key)

    def user(
        self,
        cn: str,
        *,
        not_before: dt.datetime = NOW - DAY,
        not_after: dt.datetime = NOW + 365 * DAY,
        rogue: bool = False,
        subject: x509.Name | None = None,
        label: str | None = None,
    ) -> Issued:
        """A grid user certificate (no SubjectAltName, as grid CAs issue them); ``subject``
        instead of ``/DC=org/DC=b2cal-test/CN=Users/CN=<cn>`` if given."""
        issuer = self.rogue if rogue else self.ca
        label = label or cn.lower().replace(" ", "-")
        return self._issue(
            label,
            subject or grid_name("Users", cn),
            issuer=issuer,
            not_before=not_before,
            not_after=not_after,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )

    def host(self, hostname: str) -> Issued:
        """A host certificate (for a server, or a VOMS server's signing)."""
        return self._issue(
            hostname,
            grid_name("Hosts", hostname),
            issuer=self.ca,
            not_before=NOW - DAY,
            not_after=NOW + 365 * DAY,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=hostname,
        )

    def revoke(self, issued: Issued) -> None:
        self.revoked.append(issued.cert.serial_number)
        self.write_crl()

    def write_crl(self) -> None:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.cert.subject)
            .last_update(NOW - HOUR)
            .next_update(NOW + 30 * DAY)
        )
        for serial in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - HOUR)
                .build()
            )
        crl = builder.sign(self.ca.key, hashes.SHA256())
        self.crl_file.write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    def grid_folder(self, folder: Path) -> Path:
        """A certificates folder as grid machines keep it (``/etc/grid-security/
        certificates``): the CA by name and by hash (``openssl rehash``), its CRL as
        ``<hash>.r0`` (fetch-crl's name), and the IGTF bundle's files that are neither."""
        folder.mkdir(parents=True)
        (folder / "b2cal-test-ca.pem").write_bytes(self.ca_file.read_bytes())
        (folder / "b2cal-test-ca.info").write_text("alias = b2cal-test-ca\n")
        (folder / "b2cal-test-ca.signing_policy").write_text("access_id_CA X509 '/DC=org'\n")
        (folder / "b2cal-test-ca.namespaces").write_text("TO Issuer ...\n")
        subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
        self.fetch_crl(folder)
        return folder

    def fetch_crl(self, folder: Path) -> Path:
        """What fetch-crl does: the CA's current CRL into ``<hash>.r0`` of ``folder``."""
        (hashed,) = [p for p in folder.iterdir() if re.fullmatch(r"[0-9a-f]{8}\.0", p.name)]
        target = folder / hashed.name.replace(".0", ".r0")
        temporary = target.with_suffix(".tmp")
        temporary.write_bytes(self.crl_file.read_bytes())
        temporary.replace(target)
        return target

    def cast(self) -> dict[str, Issued]:
        """The people the access tests tell apart: valid users (registered or not), and one
        certificate of each kind that must be refused (revoked, expired, not yet valid,
        issued by a CA nobody trusts)."""
        people = {
            "ada": self.user("Ada Expert"),
            "vic": self.user("Vic Viewer"),
            "cora": self.user("Cora Coordinator"),
            "eve": self.user("Eve Unknown"),
            "rex": self.user("Rex Revoked"),
            "old": self.user("Old Expired", not_before=NOW - 400 * DAY, not_after=NOW - DAY),
            "early": self.user("Early Bird", not_before=NOW + DAY),
            "mallory": self.user("Mallory Rogue", rogue=True),
        }
        self.revoke(people["rex"])
        return people

    # --- proxies and VOMS ---------------------------------------------------------------
    def proxy(
        self,
        of: Issued,
        *,
        not_before: dt.datetime = NOW - HOUR,
        not_after: dt.datetime = NOW + 12 * HOUR,
        acs: bytes | None = None,
        label: str = "proxy",
        subject_cn: str | None = None,
        policy: str = POLICY_INHERIT_ALL,
    ) -> Issued:
        """An RFC 3820 proxy of ``of`` (a user certificate or another proxy), carrying the
        VOMS attribute certificates ``acs`` (:meth:`voms_acs`) if given, with the policy
        language ``policy`` (inheritAll, independent, Globus's limited, or any OID)."""
        key = new_key()
        serial = x509.random_serial_number()
        subject = x509.Name(
            [
                *of.cert.subject,
                x509.NameAttribute(NameOID.COMMON_NAME, subject_cn or str(serial % 10**9)),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(of.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.UnrecognizedExtension(
                    ObjectIdentifier(PROXY_CERT_INFO), proxy_cert_info(policy)
                ),
                critical=True,
            )
        )
        if acs is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(ObjectIdentifier(VOMS_ACS), acs), critical=False
            )
        cert = builder.sign(of.key, hashes.SHA256())
        return _write(self.folder / "issued", label, cert, key, (of.cert, *of.chain))

    def voms_acs(
        self,
        holder: Issued,
        fqans: list[str],
        *,
        vo: str = "belle",
        uri: str = "voms.belle.test:15020",
        signer: Issued | None = None,
        not_before: dt.datetime = NOW - HOUR,
        not_after: dt.datetime = NOW + 12 * HOUR,
        tamper: bool = False,
    ) -> bytes:
        """The VOMS extension value: one AC for ``holder`` (the user certificate), signed by
        the VOMS server (or ``signer``); ``tamper`` changes a signed byte afterwards."""
        signer = signer or self.voms
        issuer_name = asn1_x509.Name.load(holder.cert.issuer.public_bytes())
        info = cms.AttributeCertificateInfoV2(
            {
                "version": "v2",
                "holder": {
                    "base_certificate_id": {
                        "issuer": [asn1_x509.GeneralName({"directory_name": issuer_name})],
                        "serial": holder.cert.serial_number,
                    }
                },
                "issuer": cms.AttCertIssuer(
                    name="v2_form",
                    value={
                        "issuer_name": [
                            asn1_x509.GeneralName(
                                {
                                    "directory_name": asn1_x509.Name.load(
                                        signer.cert.subject.public_bytes()
                                    )
                                }
                            )
                        ]
                    },
                ),
                "signature": {"algorithm": "sha256_rsa"},
                "serial_number": x509.random_serial_number(),
                "att_cert_validity_period": {
                    "not_before_time": core.GeneralizedTime(not_before),
                    "not_after_time": core.GeneralizedTime(not_after),
                },
                "attributes": [voms_attribute(vo, uri, fqans)],
            }
        )
        tbs = info.dump()
        signature = signer.key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        if tamper:
            info = cms.AttributeCertificateInfoV2.load(tbs.replace(b"Role=", b"Rolf=", 1))
        ac = cms.AttributeCertificateV2(
            {
                "ac_info": info,
                "signature_algorithm": {"algorithm": "sha256_rsa"},
                "signature": signature,
            }
        )
        return _ACSeqs([_ACSeq([ac])]).dump()


class _ACSeq(core.SequenceOf):  # type: ignore[misc]
    _child_spec = cms.AttributeCertificateV2


class _ACSeqs(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _ACSeq


def proxy_cert_info(policy: str = POLICY_INHERIT_ALL) -> bytes:
    """ProxyCertInfo (RFC 3820) with the policy language ``policy`` (an OID)."""
    return ProxyCertInfo({"proxy_policy": {"policy_language": policy}}).dump()


def voms_attribute(vo: str, uri: str, fqans: list[str]) -> cms.AttCertAttribute:
    """The VOMS attribute: IetfAttrSyntax with the VO's policy authority and the FQANs."""
    syntax = cms.IetfAttrSyntax(
        {
            "policy_authority": [
                asn1_x509.GeneralName({"uniform_resource_identifier": f"{vo}://{uri}"})
            ],
            "values": [cms.IetfAttrValue(name="octets", value=f.encode()) for f in fqans],
        }
    )
    return cms.AttCertAttribute({"type": VOMS_ATTRIBUTE, "values": [core.Any.load(syntax.dump())]})
