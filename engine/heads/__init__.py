"""Label heads: one file per head (``none``, ``ground_truth``, ``attention``, ``bca``, ``adapter``,
``grounding``), with their machinery in ``attention/`` (attention capture and maps) and ``boxes/``
(feature pyramid, detector, weights).

A head is one file: a ``Head`` subclass with a ``Params`` model and the capabilities it
``requires`` of the backend (``engine.heads.base`` shows the shape). Name it in a spec by its
dotted path, or register a short name with one line in ``engine/registry.py``. Heads know a
backend only through ``engine.backends.base``: never a backend's module or its registry name.
"""

from .base import Head

__all__ = ["Head"]
