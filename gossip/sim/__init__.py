"""Simulated adversaries and link faults, as wrappers around the encoder and the transport."""
