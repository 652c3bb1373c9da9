"""Diffusion models: the embedded shapes model (``embedded``, with ``model_world``), loading any
SD-architecture pipeline (``loading``), the folders of the shipped weights (``shipped``) and how
trained weights are stored (``trained``). Below ``backends`` and ``heads``; imports ``world`` only."""

from .loading import is_hub_id, load_pipeline, local_model_problem, resolve_model

__all__ = ["load_pipeline", "resolve_model", "is_hub_id", "local_model_problem"]
