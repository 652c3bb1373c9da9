"""``adapter``: DiffusionEngine's Detection-Adapter. A set-prediction detector over a fixed class
list, on the UNet features of the last denoising step; trained by `dde train adapter` on real
(here: rendered) images through Eq. 4. Ships trained for embedded:shapes.
"""

from __future__ import annotations

from ..models.shipped import ADAPTER_DIR
from .trained import TrainedBoxHead

__all__ = ["AdapterHead"]


class AdapterHead(TrainedBoxHead):
    name, stem, shipped = "adapter", "adapter", ADAPTER_DIR

    @classmethod
    def check_classes(cls, params, names: list[str]) -> list[str]:
        import json
        import os

        with open(os.path.join(params.weights or ADAPTER_DIR, "adapter.json")) as f:
            known = json.load(f)["classes"]
        unknown = [n for n in names if n not in known]
        if unknown:
            return [f"classes: the adapter knows {known}, got {unknown} it was not trained on; use the "
                    f"open-vocabulary 'grounding' head, or train an adapter on them"]
        return []

    def vocabulary(self):
        wanted = {c.name for c in self.classes}
        return [c if c in wanted else None for c in self.card["classes"]], None
