"""Distinguished names as the grid writes them: ``/DC=org/DC=terena/O=DESY/CN=Ada Lovelace``.

That form (OpenSSL's legacy one, in the certificate's own order of attributes) is what VOMS,
DIRAC, user registries and nginx's ``$ssl_client_s_dn_legacy`` use, so it is the key of a user
everywhere in b2cal.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import NameOID

from b2cal.errors import NotAuthenticated

_SHORT = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
}


def grid_dn(name: x509.Name) -> str:
    """``name`` as ``/DC=org/DC=b2cal-test/CN=Users/CN=Ada Lovelace``."""
    parts = []
    for rdn in name.rdns:
        for attribute in rdn:
            key = _SHORT.get(attribute.oid, attribute.oid.dotted_string)
            value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
            parts.append(f"{key}={value}")
    return "/" + "/".join(parts)


#: A value that would read as a further attribute once written in the slash form
#: (``O=Example/CN=Alice``): ``/`` followed by a key and ``=``.
_SMUGGLED = re.compile(r"/\s*[A-Za-z0-9.]+\s*=")


def check_unambiguous(name: x509.Name, what: str) -> None:
    """NotAuthenticated if the slash form of ``name`` could be read as another DN.

    The slash form does not escape ``/``: a certificate naming itself ``O="Example/CN=Alice
    Calib"`` would be written ``.../O=Example/CN=Alice Calib`` and taken for Alice, with her
    grants. The VO's member lists use the same form, so escaping on b2cal's side alone cannot
    keep the two apart; such names are refused outright.
    """
    for attribute in name:
        value = attribute.value if isinstance(attribute.value, str) else ""
        if _SMUGGLED.search(value):
            raise NotAuthenticated(
                f"{what} has a name value {value!r} that reads as more than one attribute "
                "in the grid's slash form; such names are refused"
            )


def normalise_dn(text: str) -> str:
    """A DN given in either form — ``/DC=org/CN=Ada`` or RFC 4514 ``CN=Ada,DC=org`` (what
    nginx's ``$ssl_client_s_dn`` gives) — in the grid form. RFC 4514 lists the attributes
    last first, so they are turned round."""
    text = text.strip()
    if text.startswith("/") or not text:
        return text
    parsed = x509.Name.from_rfc4514_string(text)
    return grid_dn(parsed)
