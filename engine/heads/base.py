"""The label head protocol; see ``engine.registry`` for how heads are called."""

from __future__ import annotations

from ..backends.base import StrictParams
from ..records import Generated, ImageRequest, Labels
from ..spec import ClassSpec, JobSpec

__all__ = ["Head"]


class Head:
    Params: type[StrictParams] = StrictParams
    makes_labels = True  # False: the job's classes are reported "not labelled", never "stuck"
    builds_class_prompts = False  # True: its class-only prompt must hold every class (prompt_limits)

    def __init__(self, *, params: StrictParams, classes: list[ClassSpec]):
        self.params = params
        self.classes = classes

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        return []

    def attach(self, backend) -> None:
        """Called once with the unit's backend, before any generation: a head that reads the
        backend's internals (attention, features) installs its hooks here."""

    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        raise NotImplementedError
