"""Tooling that measures fastgan: benchmarks (bench_ops, bench_step), the profiler and its
report, the roofline, trace classification and the NVML sampler. Nothing in the library
imports this package; it imports the library."""
