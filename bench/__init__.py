"""Benchmarks: they print figures; nothing here is asserted by the test suite."""
