"""The label head protocol: ``Head``. See ``engine.registry`` for how heads are called.

Adding a head is one file and, for a short name, one line in ``engine/registry.py``::

    class MyHead(Head):
        class Params(StrictParams):          # validates label_head.params of the spec, once
            threshold: float = 0.5
        requires = frozenset({DIFFUSERS_PIPELINE})   # capabilities the backend must offer
        def attach(self, backend): ...       # once: read backend.pipe, install hooks
        def label(self, requests, generated): ...    # -> one Labels per image

A head names what it needs from the backend as capabilities (``engine.backends.base.CAPABILITIES``),
never a backend by name, so every backend that offers them serves it.
"""

from __future__ import annotations

from typing import ClassVar

from ..backends.base import Backend, Configurable, StrictParams
from ..records import Generated, ImageRequest, Labels
from ..spec import JobSpec

__all__ = ["Head"]


class Head(Configurable):
    requires: ClassVar[frozenset[str]] = frozenset()  # capabilities the backend must offer
    makes_labels = True  # False: the job's classes are reported "not labelled", never "stuck"
    builds_class_prompts = False  # True: its class-only prompt must hold every class (prompt_limits)

    @classmethod
    def needs(cls, params: StrictParams) -> frozenset[str]:
        """The capabilities this head needs with these params (``requires`` unless a param adds some)."""
        return cls.requires

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        """Cross-field problems with this head in this spec, one message each; run once the backend
        is known to offer what the head needs (params: ``spec.label_head.config``)."""
        return []

    def attach(self, backend: Backend) -> None:
        """Called once with the unit's backend, before any generation: a head that reads the
        backend's internals (attention, features) installs its hooks here."""

    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        """One ``Labels`` per generated image, in order (an image that is None gets empty labels)."""
        raise NotImplementedError(f"{type(self).__name__}.label")
