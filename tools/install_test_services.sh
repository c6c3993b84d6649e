#!/usr/bin/env bash
# Install the system services and tools some tests use themselves (Debian packages):
#   pgbouncer  - tests/drivers/test_pgbouncer.py (started by the test, on loopback)
#   haproxy    - tests/drivers/test_deployments.py (TCP balancer in front of two
#                throwaway servers, started by the test, on loopback)
#   PgBouncer >= 1.19 (peering, for tests/drivers/test_deployments.py) is built
#                from Debian's source package by tools/build_pgbouncer.sh (cached
#                under the cache directory; run at the end of this script).
#   valgrind   - tools/valgrind.sh (memory checking of the compiled twin)
#   iproute2   - tests/support/netns.py: `ip netns`, veth pairs (a path to the
#                test server through a network namespace the test creates)
#   iptables   - tests/support/netns.py: the kernel black hole (DROP rules, only
#                inside that namespace). Debian 12's default backend (nft) is
#                used; tests/support/netns.py falls back to iptables-legacy when
#                the kernel has no nf_tables.
#   krb5-kdc, krb5-admin-server, krb5-user (MIT Kerberos) - testing/kerberos.py: the
#                tests/gss/ suite starts its own KDC on loopback (own krb5.conf,
#                kdc.conf and realm in a temporary directory); PostgreSQL built
#                --with-gssapi (PSYCANCEL_PG_GSSAPI=1 tools/build_postgres.sh,
#                built here once, cached) runs the GSS-encrypting server.
# Nothing is enabled or started as a system service, and no firewall rule is
# added here. Idempotent.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
has() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
need=()
has pgbouncer || need+=(pgbouncer)
has haproxy || need+=(haproxy)
has valgrind || need+=(valgrind)
has ip || need+=(iproute2)
has iptables || need+=(iptables)
has krb5kdc || need+=(krb5-kdc)
has kadmin.local || need+=(krb5-admin-server)
has kinit || need+=(krb5-user)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    as_root flock /var/lock/psycancel-apt.lock apt-get update -qq
    # The pgbouncer package would start its own service where an init system
    # runs; policy-rc.d (if any) or the package's defaults decide. The tests
    # never use that instance: they start their own, on a free port.
    DEBIAN_FRONTEND=noninteractive as_root flock /var/lock/psycancel-apt.lock apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The GSSAPI build of PostgreSQL (its own cache key; a no-op once built).
PSYCANCEL_PG_GSSAPI=1 bash "$(dirname "$0")/build_postgres.sh" >/dev/null
# The peering PgBouncer (nice: the machine may be shared); cached after the first build.
nice bash "$(dirname "$0")/build_pgbouncer.sh" >/dev/null
