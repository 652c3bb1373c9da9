"""Diffusion models: the embedded shapes model and loading any SD-architecture pipeline."""

from .loading import is_hub_id, load_pipeline, resolve_model

__all__ = ["load_pipeline", "resolve_model", "is_hub_id"]
