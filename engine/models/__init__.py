"""Diffusion models: the embedded shapes model and loading any SD-architecture pipeline."""

from .loading import load_pipeline, resolve_model

__all__ = ["load_pipeline", "resolve_model"]
