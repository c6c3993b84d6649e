#!/usr/bin/env bash
# Install the real drivers the adapter tests use into the venv given as $1.
set -euo pipefail
venv="${1:?usage: $0 VENV}"
"$venv/bin/python" -m pip install -q 'psycopg2-binary>=2.9' 'psycopg[binary]>=3.2'
