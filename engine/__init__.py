"""dde, the diffusion data engine: the library behind the ``dde`` CLI."""

from .errors import SpecError, UserError
from .spec import JobSpec, load_spec, parse_spec

__all__ = ["JobSpec", "load_spec", "parse_spec", "UserError", "SpecError", "run_job", "finalize_job"]


def __getattr__(name):  # keep `import engine` free of ray/pyarrow
    if name == "run_job":
        from .job.runner import run_job

        return run_job
    if name == "finalize_job":
        from .job.finalize import finalize_job

        return finalize_job
    raise AttributeError(name)
