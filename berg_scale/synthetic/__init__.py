"""Generated inputs that need no downloads: synthetic BERG roots (BERG's file format,
random weights) and synthetic image shards. The demo, `berg-scale synth-root`, plan
calibration, the benchmarks and the tests build on them."""
