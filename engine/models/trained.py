"""Trained weights on disk: ``STEM.safetensors`` (weights, never a pickle) beside ``STEM.json`` (the
card). The shipped heads, the oracle and the segmenter are stored this way; ``dde train`` writes them."""

from __future__ import annotations

import json
import os

__all__ = ["save_trained", "load_trained"]


def save_trained(model, folder: str, stem: str, card: dict) -> None:
    """``stem``.safetensors (weights, never a pickle) and ``stem``.json (the card) in ``folder``."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, f"{stem}.safetensors"))
    with open(os.path.join(folder, f"{stem}.json"), "w") as f:
        json.dump(card, f, indent=1)


def load_trained(model, folder: str, stem: str, name: str):
    """``model`` with the weights of ``folder``/``stem``.safetensors, in eval mode; a UserError
    naming `dde train NAME` when they are missing."""
    from safetensors.torch import load_file

    from ..errors import UserError

    path = os.path.join(folder, f"{stem}.safetensors")
    if not os.path.exists(path):
        raise UserError(f"{name}: expected trained weights at {path}; run `dde train {name}`")
    model.load_state_dict(load_file(path))
    return model.eval()
