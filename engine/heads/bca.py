"""``bca``: binarised cross-attention (DiffusionEngine, Figure 3): each named class's
cross-attention map thresholded with Otsu's method, one box per connected component.
The box baseline that trained heads must beat; no self-attention is captured.
"""

from __future__ import annotations

from ..records import Generated, Instance, Labels
from .attention.head import AttentionCaptureHead

__all__ = ["BinarisedCrossAttentionHead"]


class BinarisedCrossAttentionHead(AttentionCaptureHead):
    uses_self_attention = False
    extras_key = "bca_attention"  # beside an attention head's capture when both label one generation (the labels bench)

    def label_one(self, generated: Generated) -> Labels:
        from .attention import bca_instances, class_maps

        captured = generated.extras[self.extras_key]
        maps = class_maps(captured, generated.image.shape[0], tau=0)
        names = captured["classes"]
        return Labels([Instance(names[m], region, score)
                       for m, region, score in bca_instances(maps, self.min_pixels(*generated.image.shape[:2]))])
