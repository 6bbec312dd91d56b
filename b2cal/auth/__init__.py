"""Who is acting, and what they may do: X.509 user certificates and RFC 3820 proxies with VOMS
attribute certificates, the roles they carry, and the policy of actions."""
