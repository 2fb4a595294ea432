"""Benchmarks behind `fastgan bench`: timing.py times one call, report.py describes the
machine and writes the JSON, ops.py benchmarks the fused ops."""
