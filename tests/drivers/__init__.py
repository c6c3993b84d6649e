"""Tests of driver resolution: real psycopg2, psycopg 3 and aiopg connections cancelled
through their own libpq, and cancels through PgBouncer."""
