"""Benchmarks of the worker on real Kafka and Redis; run with `make bench`."""
