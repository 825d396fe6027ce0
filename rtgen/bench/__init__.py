"""Benchmarks that ship with rtgen (`rtgen bench ...`)."""
