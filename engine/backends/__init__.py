"""Generator backends: ``render`` (the shapes world, exact labels) and ``diffusion`` (any
Stable Diffusion-architecture pipeline, txt2img and img2img).

A backend is one file: a ``Backend`` subclass with a ``Params`` model, what it ``offers``
(``engine.backends.base.CAPABILITIES``) and ``generate``. Name it in a spec by its dotted path,
or register a short name with one line in ``engine/registry.py``. Below ``heads``, above ``models``.
"""

from .base import Backend

__all__ = ["Backend"]
