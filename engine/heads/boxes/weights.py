"""Loading a trained box head's detector: its card (``STEM.json``, which holds the detector's
config and classes) and weights (``STEM.safetensors``), as ``dde train adapter``/``grounding`` write them."""

from __future__ import annotations

import json
import os

__all__ = ["load_detector"]


def load_detector(folder: str, stem: str, name: str):
    """A trained detector and its card, from ``folder``/``stem``.safetensors and .json."""
    from ...errors import UserError
    from ...models.trained import load_trained
    from .detector import DetectorConfig, build_detector

    card_path = os.path.join(folder, f"{stem}.json")
    if not os.path.exists(card_path):
        raise UserError(f"{name}: expected a trained head at {card_path}; run `dde train {name}`")
    with open(card_path) as f:
        card = json.load(f)
    return load_trained(build_detector(DetectorConfig(**card["detector"])), folder, stem, name), card
