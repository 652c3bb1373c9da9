"""Training recipes. Checkpoints are safetensors plus JSON: never pickles."""


def flushed_print(*args) -> None:
    """The default progress echo: flushed, so progress shows when the output is piped to a log."""
    print(*args, flush=True)
