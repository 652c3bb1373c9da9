"""Generator backends. Register a new one with one line in ``engine/registry.py``."""

from .base import Backend

__all__ = ["Backend"]
