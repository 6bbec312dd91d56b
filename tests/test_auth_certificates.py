"""Identities from certificates: the user-certificate matrix (valid, expired, not yet valid,
revoked, foreign CA, no CRL), RFC 3820 proxies, and VOMS attribute certificates — made by the
test PKI (tests/pki.py) and by Debian's ``voms-proxy-fake``, the tool grid sites test with."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pki import DAY, HOUR, NOW, PKI, Issued, name

from b2cal.auth.certificates import load_chain, verify_chain
from b2cal.auth.identity import Identity, authenticate
from b2cal.auth.names import grid_dn, normalise_dn
from b2cal.auth.oids import POLICY_INDEPENDENT, POLICY_LIMITED
from b2cal.auth.policy import Action, Grant, Role, check
from b2cal.auth.trust import TrustFiles, TrustStore
from b2cal.errors import B2CalError, NotAllowed, NotAuthenticated

pytestmark = pytest.mark.unit

ADA = "/DC=org/DC=b2cal-test/CN=Users/CN=Ada Lovelace"
CALIBRATION = "/belle/Role=calibration/Capability=NULL"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def trust(pki: PKI) -> TrustStore:
    return TrustStore.load([pki.ca_file], [pki.crl_file], pki.vomsdir)


@pytest.fixture(scope="module")
def ada(pki: PKI) -> Issued:
    return pki.user("Ada Lovelace")


def who(issued: Issued, trust: TrustStore) -> Identity:
    return authenticate(load_chain(issued.cert_path.read_bytes()), trust, "belle")


def refused(issued: Issued, trust: TrustStore, *fragments: str) -> None:
    with pytest.raises(NotAuthenticated) as caught:
        who(issued, trust)
    for fragment in fragments:
        assert fragment in caught.value.reason, (fragment, caught.value.reason)


def test_user_certificates_of_every_kind(pki: PKI, trust: TrustStore, ada: Issued) -> None:
    assert who(ada, trust) == Identity(ADA)
    refused(
        pki.user("Old Timer", not_before=NOW - 400 * DAY, not_after=NOW - DAY),
        trust,
        "/CN=Old Timer expired on",
    )
    refused(pki.user("Early Bird", not_before=NOW + DAY), trust, "is not valid before")
    refused(pki.user("Mallory", rogue=True), trust, "is not issued by a trusted CA")
    gone = pki.user("Gone Away")
    assert who(gone, trust).dn.endswith("/CN=Gone Away")
    pki.revoke(gone)
    fresh = TrustStore.load([pki.ca_file], [pki.crl_file], pki.vomsdir)
    refused(gone, fresh, "/CN=Gone Away was revoked on")
    assert who(ada, fresh).dn == ADA
    # a CA whose CRL is not at hand: refused, as nginx refuses it once CRLs are configured
    without = TrustStore.load([pki.ca_file], [], pki.vomsdir)
    refused(ada, without, "no CRL of /DC=org/DC=b2cal-test/CN=b2cal Test CA")
    with pytest.raises(NotAuthenticated, match="no readable certificate"):
        load_chain(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    assert normalise_dn("CN=Ada Lovelace,CN=Users,DC=b2cal-test,DC=org") == ADA


def test_proxies_prove_their_user_and_carry_the_vomss_roles(
    pki: PKI, trust: TrustStore, ada: Issued
) -> None:
    plain = pki.proxy(ada, label="plain-proxy")
    assert who(plain, trust) == Identity(ADA, (), "proxy")
    voms = pki.proxy(ada, acs=pki.voms_acs(ada, [CALIBRATION, "/belle"]), label="voms-proxy")
    assert who(voms, trust) == Identity(ADA, (CALIBRATION, "/belle"), "proxy")
    delegated = pki.proxy(voms, label="delegated")  # a proxy of the proxy keeps the roles
    assert who(delegated, trust).fqans == (CALIBRATION, "/belle")
    chain = load_chain(voms.cert_path.read_bytes())
    assert verify_chain(chain, trust).proxies == (chain[0],)


def test_broken_proxies_are_refused(pki: PKI, trust: TrustStore, ada: Issued) -> None:
    refused(
        pki.proxy(ada, not_after=NOW - HOUR, not_before=NOW - 2 * HOUR, label="stale"),
        trust,
        "proxy",
        "expired on",
    )
    renamed = pki.proxy(ada, label="renamed", subject_cn="x")
    assert who(renamed, trust).dn == ADA  # any one CN will do
    # a proxy signed by someone else's key than its issuer's
    bob = pki.user("Bob Builder")
    forged = pki.proxy(bob, label="forged")
    # Bob's proxy presented on top of Ada's certificate
    forged.cert_path.write_bytes(
        forged.cert.public_bytes(Encoding.PEM) + ada.cert_path.read_bytes()
    )
    refused(forged, trust, "was not issued by")
    # a proxy alone, without the certificate it was made from
    only = pki.proxy(ada, label="alone")
    only.cert_path.write_bytes(
        only.cert_path.read_bytes().split(b"-----END CERTIFICATE-----")[0]
        + b"-----END CERTIFICATE-----\n"
    )
    refused(only, trust, "a proxy without the certificate it was made from")


def test_voms_attributes_that_cannot_be_trusted_are_refused(
    pki: PKI, trust: TrustStore, ada: Issued
) -> None:
    def proxy_with(label: str, **kwargs: object) -> Issued:
        holder = kwargs.pop("holder", ada)
        fqans = kwargs.pop("fqans", [CALIBRATION])
        return pki.proxy(ada, acs=pki.voms_acs(holder, fqans, **kwargs), label=label)  # type: ignore[arg-type]

    refused(proxy_with("tampered", tamper=True), trust, "not signed by", "forged")
    stranger = pki.host("voms.stranger.test")
    refused(proxy_with("stranger", signer=stranger), trust, "no VOMS server of belle")
    refused(
        proxy_with("atlas", vo="atlas", fqans=["/atlas/Role=production"]),
        trust,
        "for VO 'atlas', not 'belle'",
    )
    refused(
        proxy_with("mixed", fqans=[CALIBRATION, "/atlas/Role=production"]),
        trust,
        "FQANs of another VO: /atlas/Role=production",
    )
    refused(
        proxy_with("expired-ac", not_before=NOW - 2 * DAY, not_after=NOW - DAY),
        trust,
        "the VOMS attributes expired on",
    )
    refused(
        proxy_with("early-ac", not_before=NOW + HOUR, not_after=NOW + DAY),
        trust,
        "not valid before",
    )
    refused(
        proxy_with("someone-elses", holder=pki.user("Eve")), trust, "held by another certificate"
    )


@pytest.mark.skipif(
    shutil.which("voms-proxy-fake") is None and os.environ.get("CI") != "true",
    reason="needs Debian's voms-clients (scripts/tools.sh installs it)",
)
def test_proxies_made_by_voms_proxy_fake(
    pki: PKI, trust: TrustStore, ada: Issued, tmp_path: Path
) -> None:
    """What grid tools make: a VOMS proxy from ``voms-proxy-fake`` with the test VOMS server's
    key, accepted with its FQAN; one signed with a stranger's key, and one past its AC's
    lifetime, refused."""
    certdir = tmp_path / "certdir"
    certdir.mkdir()
    shutil.copy(pki.ca_file, certdir / "ca.pem")
    subprocess.run(["openssl", "rehash", str(certdir)], check=True, capture_output=True)

    def fake(label: str, signer: Issued, *extra: str) -> Issued:
        out = tmp_path / f"{label}.pem"
        command = [
            "voms-proxy-fake",
            "-cert",
            str(ada.cert_path),
            "-key",
            str(ada.key_path),
            "-hostcert",
            str(signer.cert_path),
            "-hostkey",
            str(signer.key_path),
            "-voms",
            "belle",
            "-uri",
            "voms.belle.test:15020",
            "-fqan",
            "/belle/Role=calibration",
            "-rfc",
            "-bits",
            "1024",
            "-out",
            str(out),
            *extra,
        ]
        env = {"X509_CERT_DIR": str(certdir), "PATH": "/usr/bin:/bin"}
        made = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert made.returncode == 0, made.stdout + made.stderr
        return Issued(ada.cert, ada.key, out, out)

    accepted = who(fake("fake", pki.voms), trust)
    assert accepted.dn == ADA and accepted.via == "proxy"
    assert accepted.fqans[0].startswith("/belle/Role=calibration")
    refused(fake("stranger", pki.host("voms.elsewhere.test")), trust, "no VOMS server of belle")
    refused(
        fake("old", pki.voms, "-vomslife", "1", "-pastac", "7200"),
        trust,
        "the VOMS attributes expired on",
    )
    limited = who(fake("limited", pki.voms, "-limited"), trust)
    assert limited.limited and limited.fqans[0].startswith("/belle/Role=calibration")


def test_proxy_policies_decide_what_a_proxy_may_do(
    pki: PKI, trust: TrustStore, ada: Issued
) -> None:
    """inheritAll acts as its user; a limited proxy (Globus's policy) only reads; an
    independent proxy inherits no rights and a policy b2cal does not know proves nothing."""
    limited = pki.proxy(ada, label="limited", policy=POLICY_LIMITED)
    reader = who(limited, trust)
    assert (reader.dn, reader.limited) == (ADA, True)
    check(reader, [Grant(Role.COORDINATOR)], Action.VIEW, "the site")
    with pytest.raises(NotAllowed, match="by a limited proxy"):
        check(reader, [Grant(Role.COORDINATOR)], Action.SIGNOFF, "calibration run 1")
    # a full proxy made from a limited one stays limited
    assert who(pki.proxy(limited, label="on-limited"), trust).limited
    refused(pki.proxy(ada, label="independent", policy=POLICY_INDEPENDENT), trust, "independent")
    refused(
        pki.proxy(ada, label="odd-policy", policy="1.2.3.4.5"),
        trust,
        "policy language b2cal does not know (1.2.3.4.5)",
    )
    assert not who(pki.proxy(ada, label="full"), trust).limited


def test_a_name_that_reads_as_another_dn_is_refused(
    pki: PKI, trust: TrustStore, ada: Issued
) -> None:
    """The slash form does not escape '/': CN="Users/CN=Ada Lovelace" would be written as
    Ada's DN. Such certificates, and proxies named so, prove nobody."""
    smuggled = name(
        (NameOID.DOMAIN_COMPONENT, "org"),
        (NameOID.DOMAIN_COMPONENT, "b2cal-test"),
        (NameOID.COMMON_NAME, "Users/CN=Ada Lovelace"),
    )
    twin = pki.user("twin", subject=smuggled, label="twin")
    assert grid_dn(twin.cert.subject) == ADA  # what the slash form makes of it
    refused(twin, trust, "reads as more than one attribute")
    o_form = name(
        (NameOID.DOMAIN_COMPONENT, "org"), (NameOID.ORGANIZATION_NAME, "Example/ CN = Bob")
    )
    refused(pki.user("o", subject=o_form, label="o-form"), trust, "'Example/ CN = Bob'")
    sneaky = pki.proxy(ada, label="sneaky", subject_cn="123/CN=Bob")
    refused(sneaky, trust, "reads as more than one attribute")
    plain = name((NameOID.DOMAIN_COMPONENT, "org"), (NameOID.COMMON_NAME, "Ada/Lovelace 1/2"))
    assert (
        who(pki.user("slash", subject=plain, label="slash"), trust).dn
        == "/DC=org/CN=Ada/Lovelace 1/2"
    )


def test_the_grid_certificates_folder_is_read_as_fetch_crl_leaves_it(
    pki: PKI, ada: Issued, tmp_path: Path
) -> None:
    """``<hash>.0`` CAs and ``<hash>.r0`` CRLs (symlinks made by ``openssl rehash``, files by
    fetch-crl), CA files by name, and the IGTF bundle's other files, all in one folder."""
    folder = pki.grid_folder(tmp_path / "certificates")
    store = TrustStore.load([folder], [folder], pki.vomsdir)
    assert len(store.cas) == 1 and len(store.crls) == 1  # each once, though named twice
    assert who(ada, store).dn == ADA
    gone = pki.user("Gone Later")
    pki.revoke(gone)
    files = TrustFiles(folder, None, pki.vomsdir, reload_seconds=0.01)
    first = files.store()
    assert who(gone, first).dn.endswith("Gone Later")  # the folder's CRL is the old one
    assert files.store() is first  # nothing changed: the same store
    pki.fetch_crl(folder)  # fetch-crl's update
    import time

    time.sleep(0.02)
    with pytest.raises(NotAuthenticated, match="Gone Later was revoked"):
        who(gone, files.store())
    crl_only = tmp_path / "crl-only.pem"
    crl_only.write_bytes(pki.crl_file.read_bytes())
    with pytest.raises(B2CalError, match="holds no readable certificates"):
        TrustStore.load([crl_only])  # a bundle named as CAs that holds none: said
