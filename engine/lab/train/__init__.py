"""Training recipes (``dde train ...``, ``dde probe``). Checkpoints are safetensors plus JSON: never
pickles. Part of ``lab``: may use ``heads`` (their detectors), ``models`` and ``job``, and
``lab.metrics`` to score; never imported by the job path."""


def flushed_print(*args) -> None:
    """The default progress echo: flushed, so progress shows when the output is piped to a log."""
    print(*args, flush=True)
