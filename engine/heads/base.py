"""The label head protocol; see ``engine.registry`` for how heads are called."""

from __future__ import annotations

from ..backends.base import StrictParams
from ..records import Generated, ImageRequest, Labels
from ..spec import ClassSpec, JobSpec

__all__ = ["Head"]


class Head:
    Params: type[StrictParams] = StrictParams

    def __init__(self, *, params: StrictParams, classes: list[ClassSpec]):
        self.params = params
        self.classes = classes

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        return []

    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        raise NotImplementedError
