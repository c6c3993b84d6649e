#!/usr/bin/env bash
# Install the system services some tests start themselves (Debian packages):
#   pgbouncer  - tests/drivers/test_pgbouncer.py (started by the test, on loopback)
#   valgrind   - tools/valgrind.sh (memory checking of the compiled twin)
# Nothing is enabled or started as a system service. Idempotent.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v valgrind >/dev/null || need+=(valgrind)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    as_root apt-get update -qq
    # The pgbouncer package would start its own service where an init system
    # runs; policy-rc.d (if any) or the package's defaults decide. The tests
    # never use that instance: they start their own, on a free port.
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
