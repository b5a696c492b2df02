"""Data layer: event logs, benchmark registry, temporal protocol, sequences, synthetic drift."""
