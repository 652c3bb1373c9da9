"""Offline work, never on the job path: ``train/`` (recipes for the shipped models and heads),
``evals/`` (benchmarks) and ``metrics`` (box AP, segmentation scores), which both use.

Inference (``job``, ``heads``, ``backends``, ``models``, ``workers``) never imports this package;
``lint-imports`` holds that (see ``pyproject.toml``).
"""
