"""Benchmarks that judge generated data against the shapes world's ground truth."""
