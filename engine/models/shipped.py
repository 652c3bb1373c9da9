"""The folders of the models that ship inside the package, in one place.

``shipped(name)`` is ``engine/models/NAME``; the constants below name the ones the code reads.
``pyproject.toml`` ships everything under ``engine/models`` as package data.
"""

from __future__ import annotations

import os

__all__ = ["SHIPPED_DIR", "shipped", "SHAPES_DIR", "CLIP_DIR", "ADAPTER_DIR", "GROUNDING_DIR", "ORACLE_DIR",
           "SEGMENTER_DIR", "CONTROLNET_DIR"]

SHIPPED_DIR = os.path.dirname(os.path.abspath(__file__))


def shipped(name: str) -> str:
    """The folder of the shipped model ``name`` (it may not exist: some are trained locally)."""
    return os.path.join(SHIPPED_DIR, name)


SHAPES_DIR = shipped("shapes")  # the embedded diffusion model (embedded:shapes)
CLIP_DIR = shipped("clip")  # the small shapes CLIP
ADAPTER_DIR = shipped("adapter")  # the Detection-Adapter box head
GROUNDING_DIR = shipped("grounding")  # the open-vocabulary grounding box head
ORACLE_DIR = shipped("oracle")  # the fidelity oracle (a classifier)
SEGMENTER_DIR = shipped("segmenter")  # the oracle segmenter of the labels benchmark
CONTROLNET_DIR = shipped("controlnet")  # the embedded model's segmentation ControlNet
