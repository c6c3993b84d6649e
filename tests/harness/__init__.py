"""Tests of the harness itself: the throwaway server, the proxy, certificates."""
