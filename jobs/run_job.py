"""Thin job entrypoint for Ray Jobs / KubeRay: ``python -m jobs.run_job SPEC [dde run options]``."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
