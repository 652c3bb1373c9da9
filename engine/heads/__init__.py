"""Label heads. Register a new one with one line in ``engine/registry.py``."""

from .base import Head

__all__ = ["Head"]
