"""The BERG paper's in silico experiments over committed responses, one module each.

Each experiment takes an output folder written by `generate` plus a label table
(`labels.py`), streams the responses it needs, and writes a Parquet table, a JSON
summary and figures under its `--out` folder.
"""
