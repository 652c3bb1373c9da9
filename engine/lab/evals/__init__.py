"""Benchmarks that judge generated data against the shapes world's ground truth (``dde bench``).
The top of ``lab``: uses ``train`` (the oracles it loads) and ``metrics``."""
