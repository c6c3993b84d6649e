"""GSSAPI (Kerberos) encryption: a real MIT KDC and a PostgreSQL built --with-gssapi,
started by the tests; the cancel of a GSS-encrypted session on the wire, the policy
for a legacy libpq, and a KDC that stops answering (issue 22)."""
