"""The Ray layer of a generation run.

`run.run_generation` is the entry point: preflight checks, resume bookkeeping, one
`EncoderWorker` actor per GPU (or N CPU workers), the dynamic shard scheduler with
retries and speculative tail execution, progress, and the run manifest.
"""
