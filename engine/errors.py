"""Errors a user can fix. The CLI prints them and exits with code 2."""

__all__ = ["UserError", "SpecError", "StorageUnavailable", "InputChanged"]


class UserError(Exception):
    """A mistake in the user's input: the message names the field, what was expected, what was given."""

    exit_code = 2


class SpecError(UserError):
    """One or more problems in a job spec, one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid job spec ({len(self.problems)} problem(s)):\n{lines}")


class StorageUnavailable(UserError):
    """The output's storage stayed unreachable through every retry. Not the user's mistake, but
    theirs to act on: committed units are kept, and ``dde resume`` continues once it is back.
    The CLI prints it in one line like any UserError, with its own exit code."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class InputChanged(UserError):
    """An input the job planned with (a prompts, annotations or captions file, a reference
    image) differs from what the job recorded when it first read it. Resuming would plan
    or generate from other inputs than the committed units did, so the job stops."""
