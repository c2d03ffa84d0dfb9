"""Helpers that tests, the demo and benchmarks share: a loopback S3 server,
environment hygiene, synthetic image shards and synthetic BERG roots."""
