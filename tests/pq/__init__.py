"""Tests of the pq layer: both twins side by side (parity, threads, fork, the GIL, the
compiled offload engine, which twin the loader picks)."""
