"""Benchmark scripts (not tests: their numbers depend on the machine)."""
