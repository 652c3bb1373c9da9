"""One registry per extension point: generator backends and label heads.

Entries are registered by import path so that looking a name up (at spec validation,
in the CLI) does not import torch: backend and head modules import heavy libraries
inside the functions that need them.

How registered objects are called
---------------------------------
Generator backend classes (``BACKENDS``)::

    backend = Backend(params=Backend.Params(...), classes=[ClassSpec, ...])
    backend.max_instances_per_image        # int | None, used to reject impossible bounds
    backend.generate(requests: list[ImageRequest]) -> list[Generated]

Label head classes (``HEADS``)::

    head = Head(params=Head.Params(...), classes=[ClassSpec, ...])
    head.attach(backend)               # once: heads that read the model install hooks here
    head.label(requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]

Unit executor classes (``EXECUTORS``: ``ray`` for every output but ``memory://``, which runs
``in_process``; ``workers/`` provides both, and the library never imports it)::

    executor = Executor(spec, on_wait=callable)   # on_wait(text | None): what starting workers wait for
    executor.run(units: list[dict], on_done)      # on_done(summary) per committed unit
    executor.shutdown()

Each class has a ``Params`` pydantic model (extra fields forbidden) that validates the
``params:`` mapping of the spec, and optional ``check_spec(spec) -> list[str]`` that
returns cross-field problems (for example a head that needs a particular backend).
"""

from __future__ import annotations

import importlib

from .errors import UserError

__all__ = ["Registry", "BACKENDS", "HEADS", "EXECUTORS"]


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._targets: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        """Register ``name`` as ``"package.module:ClassName"``."""
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._targets[name] = target

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: str) -> bool:
        return name in self._targets

    def get(self, name: str) -> type:
        if name not in self._targets:
            raise UserError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}")
        module_name, _, attr = self._targets[name].partition(":")
        return getattr(importlib.import_module(module_name), attr)


BACKENDS = Registry("generator backend")
BACKENDS.register("render", "engine.backends.render:RenderBackend")
BACKENDS.register("diffusion", "engine.backends.diffusion:DiffusionBackend")

HEADS = Registry("label head")
HEADS.register("ground_truth", "engine.heads.ground_truth:GroundTruthHead")
HEADS.register("none", "engine.heads.none:NoLabelsHead")
HEADS.register("attention", "engine.heads.attention.head:AttentionHead")
HEADS.register("bca", "engine.heads.bca:BinarisedCrossAttentionHead")
HEADS.register("adapter", "engine.heads.adapter:AdapterHead")
HEADS.register("grounding", "engine.heads.grounding:GroundingHead")

EXECUTORS = Registry("unit executor")
EXECUTORS.register("ray", "workers.pool:UnitPool")
EXECUTORS.register("in_process", "workers.pool:InProcessPool")
