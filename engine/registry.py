"""One registry per extension point: generator backends, label heads and unit executors.

Entries are registered by import path so that looking a name up (at spec validation,
in the CLI) does not import torch: backend and head modules import heavy libraries
inside the functions that need them. A spec may also name a class outside this package
by its dotted path, ``generator: {name: "my_package.backends:MyBackend"}``: one file and
no registry line (``tests/fixtures/plugins/`` holds an example of each).

How registered objects are called
---------------------------------
Generator backend classes (``BACKENDS``, base ``engine.backends.base.Backend``)::

    backend = build_backend(spec)          # Backend(params=spec.generator.config, classes=spec.class_specs)
    backend.offers                         # capabilities (backends.base.CAPABILITIES) heads may need
    backend.max_instances_per_image        # int | None, used to reject impossible bounds
    backend.generate(requests: list[ImageRequest]) -> list[Generated]

Label head classes (``HEADS``, base ``engine.heads.base.Head``)::

    head = build_head(spec)                # Head(params=spec.label_head.config, classes=spec.class_specs)
    head.needs(params)                     # capabilities the backend must offer (checked with the spec)
    head.attach(backend)                   # once: heads that read the model install hooks here
    head.label(requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]

Unit executor classes (``EXECUTORS``: ``ray`` for every output but ``memory://``, which runs
``in_process``; ``workers/`` provides both, and the library never imports it)::

    executor = Executor(spec, on_wait=callable)   # on_wait(text | None): what starting workers wait for
    executor.run(units: list[records.Unit], on_done)   # on_done(summary) per committed unit
    executor.shutdown()

Each backend and head class has a ``Params`` pydantic model (extra fields forbidden) that
validates the ``params:`` mapping of the spec once (``spec.generator.config``,
``spec.label_head.config``), and optional ``check_spec(spec) -> list[str]`` that returns
cross-field problems; a backend's optional ``check_head(spec, needs) -> list[str]`` refuses
params that would break a capability the head needs (a speed option that skips its hooks).
"""

from __future__ import annotations

import importlib

from .errors import UserError

__all__ = ["Registry", "BACKENDS", "HEADS", "EXECUTORS", "build_backend", "build_head", "is_dotted_path"]


def is_dotted_path(name: str) -> bool:
    """``package.module:ClassName``: a class named by where it lives, not by a registry name."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr.isidentifier())


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
        """The class registered as ``name``, or at the dotted path ``name`` (``package.module:Class``);
        UserError listing the valid names when neither holds."""
        if name in self._targets:
            module_name, _, attr = self._targets[name].partition(":")
            return getattr(importlib.import_module(module_name), attr)
        if not is_dotted_path(name):
            raise UserError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}, or a dotted "
                            f"path 'package.module:ClassName'")
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"{self.kind} {name!r}: cannot load it ({type(e).__name__}: {e}); valid names: "
                            f"{', '.join(self.names())}, or the dotted path of an importable class") from None


BACKENDS = Registry("generator backend")
BACKENDS.register("render", "engine.backends.render:RenderBackend")
BACKENDS.register("diffusion", "engine.backends.diffusion:DiffusionBackend")
BACKENDS.register("controlnet", "engine.backends.controlnet:ControlNetBackend")

HEADS = Registry("label head")
HEADS.register("ground_truth", "engine.heads.ground_truth:GroundTruthHead")
HEADS.register("none", "engine.heads.none:NoLabelsHead")
HEADS.register("attention", "engine.heads.attention.head:AttentionHead")
HEADS.register("bca", "engine.heads.bca:BinarisedCrossAttentionHead")
HEADS.register("adapter", "engine.heads.adapter:AdapterHead")
HEADS.register("grounding", "engine.heads.grounding:GroundingHead")
HEADS.register("condition", "engine.heads.condition:ConditionHead")

EXECUTORS = Registry("unit executor")
EXECUTORS.register("ray", "workers.pool:UnitPool")
EXECUTORS.register("in_process", "workers.pool:InProcessPool")


def build_backend(spec):
    """The generator backend of ``spec`` (a checked ``JobSpec``), with its validated params."""
    return spec.generator.component(params=spec.generator.config, classes=spec.class_specs)


def build_head(spec):
    """The label head of ``spec`` (a checked ``JobSpec``), with its validated params."""
    return spec.label_head.component(params=spec.label_head.config, classes=spec.class_specs)
