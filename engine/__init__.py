"""dde, the diffusion data engine: the library behind the ``dde`` CLI.

Layers, top to bottom; a module imports only from its own layer and those below (``lint-imports``
holds this, with the contracts in ``pyproject.toml``):

- ``cli``: the ``dde`` command.
- ``service`` (HTTP API, Ray Serve, job submission) and ``lab`` (training, benchmarks, metrics):
  independent of each other; nothing on the job path imports them.
- ``job``: the driver (prompts, planner, runner, finalize) and the views of a job.
- ``heads``: label heads; ``backends``: generator backends; ``models``: pipelines and shipped weights.
- ``output``: what a job leaves on storage; ``world``: the shapes world.
- ``spec``, ``registry``, ``records``, ``images``, ``errors``: the job spec, the extension
  points, and the records a unit flows through.

``workers/`` sits above the whole library: the runner finds its executors in
``registry.EXECUTORS`` by name and never imports it. A new head or backend is one file (see
``engine.heads.base``, ``engine.backends.base`` and README.md, "Extending").
"""

from .errors import SpecError, UserError

__all__ = ["JobSpec", "load_spec", "parse_spec", "UserError", "SpecError", "run_job", "finalize_job"]


def __getattr__(name):  # keep `import engine` free of ray, pyarrow and pydantic (the trainers run without them)
    if name in ("JobSpec", "load_spec", "parse_spec"):
        from . import spec

        return getattr(spec, name)
    if name == "run_job":
        from .job.runner import run_job

        return run_job
    if name == "finalize_job":
        from .job.finalize import finalize_job

        return finalize_job
    raise AttributeError(name)
