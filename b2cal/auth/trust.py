"""What a site trusts: its certificate authorities with their revocation lists, and the VOMS
servers of the VOs whose attribute certificates it accepts.

Laid out as grid sites keep them: a CA bundle or a folder of PEM files (``/etc/grid-security/
certificates``), CRLs beside them, and a *vomsdir* with one folder per VO holding its VOMS
servers' certificates (``vomsdir/belle/voms.belle.test.pem``). A CA without a CRL, or with
an expired one, is refused: a revoked user must never pass because a list was not fetched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from b2cal.auth.names import grid_dn
from b2cal.errors import B2CalError


def _pem_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt", ".r0", ".0"))
    return [path]


def load_certificates(paths: Iterable[Path]) -> list[x509.Certificate]:
    found: list[x509.Certificate] = []
    for path in paths:
        for file in _pem_files(Path(path)):
            try:
                found.extend(x509.load_pem_x509_certificates(file.read_bytes()))
            except (OSError, ValueError) as exc:
                raise B2CalError(f"{file} holds no readable certificates: {exc}") from None
    return found


def load_crls(paths: Iterable[Path]) -> list[x509.CertificateRevocationList]:
    found = []
    for path in paths:
        for file in _pem_files(Path(path)):
            data = file.read_bytes()
            if b"BEGIN X509 CRL" not in data:
                continue
            for block in data.split(b"-----END X509 CRL-----")[:-1]:
                pem = (
                    block[block.index(b"-----BEGIN X509 CRL-----") :] + b"-----END X509 CRL-----\n"
                )
                try:
                    found.append(x509.load_pem_x509_crl(pem))
                except ValueError as exc:
                    raise B2CalError(f"{file} holds an unreadable CRL: {exc}") from None
    return found


@dataclass
class TrustStore:
    """Trusted CAs (with their CRLs) and VOMS servers by VO."""

    cas: list[x509.Certificate]
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    #: VO name -> certificates of its VOMS servers.
    voms_servers: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    #: Refuse a certificate whose CA has no CRL (as nginx does once CRLs are configured).
    require_crls: bool = True

    @classmethod
    def load(
        cls,
        cas: Iterable[Path],
        crls: Iterable[Path] = (),
        vomsdir: Path | None = None,
        require_crls: bool = True,
    ) -> TrustStore:
        servers: dict[str, list[x509.Certificate]] = {}
        if vomsdir is not None and Path(vomsdir).is_dir():
            for folder in sorted(p for p in Path(vomsdir).iterdir() if p.is_dir()):
                servers[folder.name] = load_certificates([folder])
        store = cls(load_certificates(cas), load_crls(crls), servers, require_crls)
        if not store.cas:
            raise B2CalError("no trusted certificate authority was given")
        return store

    def crl_for(
        self, issuer: x509.Certificate, at: dt.datetime
    ) -> x509.CertificateRevocationList | None:
        """The issuer's CRL, its signature checked; B2CalError-free: NotAuthenticated is
        raised by the caller when it matters."""
        for crl in self.crls:
            if crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                return crl
        return None

    def describe(self) -> str:
        vos = ", ".join(sorted(self.voms_servers)) or "none"
        return f"{len(self.cas)} CAs ({', '.join(grid_dn(c.subject) for c in self.cas)}), VOs {vos}"
