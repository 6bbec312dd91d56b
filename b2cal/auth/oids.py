"""Object identifiers of the grid's certificate extensions (RFC 3820 proxies, VOMS)."""

#: ProxyCertInfo (RFC 3820): marks a certificate as a proxy of its issuer.
PROXY_CERT_INFO = "1.3.6.1.5.5.7.1.14"
#: The VOMS extension of a proxy: SEQUENCE { SEQUENCE OF AttributeCertificate }.
VOMS_ACS = "1.3.6.1.4.1.8005.100.100.5"
#: The VOMS attribute of an AC: IetfAttrSyntax holding the FQANs.
VOMS_ATTRIBUTE = "1.3.6.1.4.1.8005.100.100.4"
#: Proxy policy languages (the ProxyCertInfo's ``policyLanguage``): RFC 3820's ``inheritAll``
#: (the proxy acts with all its issuer's rights) and ``independent`` (with none of them), and
#: Globus's *limited* proxy (for reading: grid services refuse it to start jobs).
POLICY_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
POLICY_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
POLICY_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"
