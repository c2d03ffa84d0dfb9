"""Data in and out: stimulus shards, decoding, response shards, markers, results."""
