"""Test helpers shared by unit and integration tests: the loopback Hub double, tiny checkpoints, processes."""
