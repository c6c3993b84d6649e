"""Reliability and security: encryption on the wire, network faults, task cancellation at
each handshake stage, never hanging whatever the input, soak."""
