"""Tests of the command line: python -m psycancel info (text and --json)."""
