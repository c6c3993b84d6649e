"""Tests of the cancel engine and the public API: every mode and placement, cancel_after,
the legacy fallback, Trio, misuse, threads, and the sans-IO machine itself."""
