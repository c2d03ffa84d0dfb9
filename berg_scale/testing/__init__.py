"""Test infrastructure: a loopback S3 server and the tests' environment hygiene."""
