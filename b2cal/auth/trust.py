"""What a site trusts: its certificate authorities with their revocation lists, and the VOMS
servers of the VOs whose attribute certificates it accepts.

Laid out as grid sites keep them: a CA bundle or a folder of PEM files (``/etc/grid-security/
certificates``: ``<hash>.0`` and ``<name>.pem`` for the CAs, the ``<hash>.r0`` CRLs fetch-crl
writes beside them, and ``.info``, ``.signing_policy``, ``.namespaces`` files that are neither),
and a *vomsdir* with one folder per VO holding its VOMS servers' certificates
(``vomsdir/belle/voms.belle.test.pem``). A CA without a CRL, or with an expired one, is
refused: a revoked user must never pass because a list was not fetched.

:class:`TrustFiles` is the store the services use: read again when its files change, checked
at most once per reload period, so a CRL fetch-crl replaces counts within that period.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from b2cal.auth.names import grid_dn
from b2cal.errors import B2CalError

log = logging.getLogger("b2cal.auth")
#: Files of a certificates folder that may hold CAs or CRLs: ``x.pem``, ``x.crt``, ``x.crl``,
#: and OpenSSL's hashed names, ``<hash>.0`` (a CA) and ``<hash>.r0`` (its CRL).
_TRUST_FILE = re.compile(r".*\.(pem|crt|crl|r?\d+)$")
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_CRL = b"-----BEGIN X509 CRL-----"


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if _TRUST_FILE.fullmatch(p.name) and p.is_file())
    return [path]


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise B2CalError(f"cannot read {file}: {exc.strerror or exc}") from None


def load_certificates(paths: Iterable[Path]) -> list[x509.Certificate]:
    """The certificates in ``paths`` (bundles, or folders in the grid's layout), each once
    (a folder names every CA twice, by hash and by name). A file named as a bundle that holds
    no certificate is an error; in a folder, files of CRLs only are passed over."""
    found: dict[bytes, x509.Certificate] = {}
    for path in paths:
        folder = Path(path).is_dir()
        for file in _files(Path(path)):
            data = _read(file)
            if folder and _CERTIFICATE not in data:
                continue
            try:
                certificates = x509.load_pem_x509_certificates(data)
            except ValueError as exc:
                raise B2CalError(f"{file} holds no readable certificates: {exc}") from None
            for cert in certificates:
                found.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    return list(found.values())


def load_crls(paths: Iterable[Path]) -> list[x509.CertificateRevocationList]:
    found = []
    for path in paths:
        for file in _files(Path(path)):
            data = _read(file)
            if _CRL not in data:
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


class TrustFiles:
    """A trust store read from files, read again when they change (looked at once per
    ``reload_seconds`` at most: fetch-crl replaces CRLs while a service runs). The store
    object changes only when the files did, so whoever judged an identity with one store
    knows to judge it again when :meth:`store` returns another."""

    def __init__(
        self, cas: Path, crls: Path | None, vomsdir: Path | None, reload_seconds: float = 60.0
    ) -> None:
        self.cas, self.crls, self.vomsdir = cas, crls or cas, vomsdir
        self.reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[tuple[str, float, int], ...] = ()
        self._store: TrustStore | None = None

    def _stamp_now(self) -> tuple[tuple[str, float, int], ...]:
        files: list[Path] = []
        for root in filter(None, (self.cas, self.crls, self.vomsdir)):
            if root.is_dir():
                files.extend(p for p in sorted(root.rglob("*")) if p.is_file())
            elif root.exists():
                files.append(root)
        stamp = []
        for file in files:
            try:
                info = file.stat()
            except OSError:
                continue  # replaced while we looked: the next look sees it
            stamp.append((str(file), info.st_mtime, info.st_size))
        return tuple(stamp)

    def store(self) -> TrustStore:
        with self._lock:
            now = time.monotonic()
            if self._store is not None and now - self._checked < self.reload_seconds:
                return self._store
            self._checked = now
            stamp = self._stamp_now()
            if self._store is None or stamp != self._stamp:
                self._store = TrustStore.load([self.cas], [self.crls], self.vomsdir)
                self._stamp = stamp
                log.info("trusting %s", self._store.describe())
            return self._store
