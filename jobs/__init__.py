"""The Ray job entrypoint (``python -m jobs.run_job``: the ``dde`` CLI) and example specs. The top layer."""
