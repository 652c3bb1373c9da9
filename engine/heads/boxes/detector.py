"""The set-prediction detector of the trained label heads, on a UNet feature pyramid.

One network serves both heads; only the classifier differs:

- ``adapter`` (DiffusionEngine's Detection-Adapter): a linear classifier over a fixed class list;
- ``grounding`` (InstaGen's grounding head): class scores are dot products between query
  features and text embeddings of class names, so any name can be asked for.

Layout: each pyramid level is projected to ``width`` channels and summed, top-down, onto the
finest level (the ``fused`` map; the optional PROPS heatmap head reads it, in train mode only). The
fused map is pooled to a ``query_side`` x ``query_side`` grid of queries, each anchored at its
cell centre; transformer layers let the queries see each other (so one-to-one matching needs
no NMS), then MLPs give class scores and boxes (normalised cx, cy, w, h relative to the anchor).

    detector = build_detector(DetectorConfig(...))
    out = detector(pyramid, text=None)   # {"logits": (B,Q,C), "boxes": (B,Q,4), "heatmap": (B,C,h,w) | None}
                                         # (the heatmap in train mode only)
    found = detections(out, threshold=0.3, image_size=64)  # per image: [(class index, score, xywh)]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .matching import MatchCosts

__all__ = ["DetectorConfig", "build_detector", "detections", "DECODINGS", "NMS_IOU", "detection_loss", "LossWeights",
           "capacity", "check_capacity"]

PRIOR_PROBABILITY = 0.01  # focal-loss prior: every query starts as "nothing here"
NMS_IOU = 0.7  # one-to-one matching leaves few duplicates; heads rescoring the queries may need lower
HEATMAP_LEVELS = ("finest", "coarsest")


@dataclass(frozen=True)
class DetectorConfig:
    levels: dict[int, int]  # pyramid stride -> channels
    image_size: int
    num_classes: int = 0  # the adapter's fixed classes; 0 with text_width for grounding
    text_width: int = 0  # grounding: width of the text encoder's embeddings
    width: int = 128
    query_side: int = 8
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1  # in the transformer layers: the mean teacher's student needs it (InstaGen)
    heatmap: bool = False
    heatmap_level: str = "finest"  # the PROPS head reads the fused finest map, or (PROPS' code) the coarsest level

    def __post_init__(self):
        # sorted by stride: module (and so optimizer state) order must not depend on where the levels came from
        object.__setattr__(self, "levels", {int(k): int(v) for k, v in sorted(self.levels.items(),
                                                                               key=lambda kv: int(kv[0]))})
        if (self.num_classes > 0) == (self.text_width > 0):
            raise ValueError(f"expected exactly one of num_classes and text_width, got {self.num_classes}, "
                             f"{self.text_width}")
        if self.heatmap and not self.num_classes:
            raise ValueError("heatmap: expected a fixed class list (num_classes > 0)")
        if self.heatmap_level not in HEATMAP_LEVELS:
            raise ValueError(f"heatmap_level: expected one of {HEATMAP_LEVELS}, got {self.heatmap_level!r}")

    def to_json(self) -> dict:
        return {**asdict(self), "levels": {str(k): v for k, v in self.levels.items()}}


def check_capacity(queries: int | None = None, layers: int | None = None, width: int | None = None) -> str | None:
    """One message naming the flag if a requested capacity cannot be built, else None: ``queries``
    must be a square (one query per cell of a grid), ``width`` a multiple of 32 (16 GroupNorm
    groups, one attention head per 32 channels), ``layers`` at least 1."""
    import math

    if queries is not None and (queries < 1 or math.isqrt(queries) ** 2 != queries):
        side = max(1, math.isqrt(max(queries, 1)))
        return (f"--queries: expected a square number of queries (they sit on a square grid), got {queries}; "
                f"use {side * side} or {(side + 1) ** 2}")
    if width is not None and (width < 32 or width % 32):
        return f"--width: expected a multiple of 32 (at least 32), got {width}; use {max(32, round(width / 32) * 32)}"
    if layers is not None and layers < 1:
        return f"--layers: expected at least 1 transformer layer, got {layers}"
    return None


def capacity(max_boxes: int, classes: int, queries: int | None = None, layers: int | None = None,
             width: int | None = None) -> dict:
    """The detector's size (``query_side``, ``layers``, ``width``, ``heads``): the requested values,
    else defaults sized for the training data.

    - queries: the smallest square of at least ``max(64, 4 x max_boxes)``, ``max_boxes`` the most
      boxes one training image holds (the detector outputs at most one box per query; DINO keeps
      900 for COCO, whose busiest training image has 93 boxes: 4 x 93 gives 400 here). The shapes
      world (at most 4 objects) keeps the shipped 8 x 8 = 64.
    - width: 128 up to 100 classes, 256 beyond (an LVIS-scale vocabulary of 1,203 classes); heads:
      one per 32 channels. layers: 2. The defaults for more than 64 queries or 100 classes are
      sizing rules, not measured settings: only the shapes size (64, 2, 128) has been trained and
      benchmarked (BENCHMARKS.md).
    """
    import math

    problem = check_capacity(queries, layers, width)
    if problem:
        raise ValueError(problem)
    queries = queries or max(64, 4 * max_boxes)
    side = math.isqrt(queries - 1) + 1 if queries > 1 else 1
    width = width or (128 if classes <= 100 else 256)
    return {"query_side": side, "layers": layers or 2, "width": width, "heads": width // 32}


@dataclass(frozen=True)
class LossWeights(MatchCosts):
    """Loss weights: the matching costs (``MatchCosts``: DINO's focal x2, L1 x5, GIoU x2) plus what
    differs from them in the loss, all unitless multipliers of mean losses.

    - ``class_loss``: the focal loss's weight. DINO's configs (and InstaGen's) use 1 (it is the
      matching cost that is 2). The shipped heads use 2, measured better here: with 1 the adapter
      lost 0.021 rendered-val AP50 and the grounding head's self-training collapsed novel AP50
      (both seeds, reduced scale; BENCHMARKS.md "Paper fidelity").
    - ``heatmap``: the PROPS heatmap MSE's weight. The PROPS code uses 1.5; the shipped adapter
      was trained with 10: rendered-val AP50 0.734 against 0.704 without the heatmap head at
      3,000 iterations, one seed (BENCHMARKS.md, "Heatmap auxiliary head"); 1.5 against 10 alone
      is +0.002 AP50 at reduced scale, within the seed spread (0.038).
    - ``min_radius``, ``rho``, ``sigma_rule``: the heatmap targets (``matching.heatmap_targets``):
      ``sigma_rule="centernet"`` (shipped) or ``"radius"`` (PROPS' sigma = r).
    """

    class_loss: float = 2.0
    heatmap: float = 10.0
    min_radius: float = 4.0
    rho: float = 0.5
    sigma_rule: str = "centernet"


def build_detector(config: DetectorConfig):
    import math

    import torch
    import torch.nn as nn

    def mlp(cin, cout):
        return nn.Sequential(nn.Linear(cin, config.width), nn.ReLU(), nn.Linear(config.width, config.width),
                             nn.ReLU(), nn.Linear(config.width, cout))

    class SetDetector(nn.Module):
        def __init__(self):
            super().__init__()
            w = config.width
            self.config = config
            self.project = nn.ModuleDict({str(s): nn.Sequential(nn.Conv2d(c, w, 1), nn.GroupNorm(16, w))
                                          for s, c in config.levels.items()})
            self.fuse = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(16, w), nn.ReLU())
            self.position = nn.Parameter(torch.randn(config.query_side**2, w) * 0.02)
            layer = nn.TransformerEncoderLayer(w, config.heads, 2 * w, config.dropout, batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(w)
            self.box = mlp(w, 4)
            prior = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
            if config.num_classes:
                self.classify = nn.Linear(w, config.num_classes)
                nn.init.constant_(self.classify.bias, prior)
            else:
                self.query_proj = nn.Linear(w, w)
                self.text_proj = nn.Sequential(nn.LayerNorm(config.text_width), nn.Linear(config.text_width, w))
                self.logit_bias = nn.Parameter(torch.tensor(prior))
            if config.heatmap:
                self.heatmap = nn.Sequential(nn.Conv2d(w, 64, 3, padding=1), nn.ReLU(),
                                             nn.Conv2d(64, config.num_classes, 1))
            side = config.query_side
            centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
            cy, cx = torch.meshgrid(centres, centres, indexing="ij")
            self.register_buffer("anchors", torch.stack([cx.flatten(), cy.flatten()], -1), persistent=False)

        def fused(self, pyramid: dict):
            import torch.nn.functional as F

            finest = min(config.levels)
            size = pyramid[finest].shape[-2:]
            total = 0
            for stride in sorted(config.levels, reverse=True):
                level = self.project[str(stride)](pyramid[stride].float())
                total = total + (level if stride == finest else F.interpolate(level, size=size, mode="bilinear",
                                                                               align_corners=False))
            return self.fuse(total)

        def forward(self, pyramid: dict, text=None) -> dict:
            import torch.nn.functional as F

            fused = self.fused(pyramid)
            queries = F.adaptive_avg_pool2d(fused, config.query_side).flatten(2).transpose(1, 2)
            queries = self.norm(self.encoder(queries + self.position))
            delta = self.box(queries)
            centre = (torch.logit(self.anchors) + delta[..., :2]).sigmoid()
            size = (delta[..., 2:] - 1.5).sigmoid()  # starts near 0.18 of the image: a typical object
            boxes = torch.cat([centre, size], -1)
            if config.num_classes:
                logits = self.classify(queries)
            else:
                if text is None:
                    raise ValueError("grounding detector: expected text embeddings (C, text_width), got None")
                logits = (self.query_proj(queries) @ self.text_proj(text).T) / math.sqrt(config.width)
                logits = logits + self.logit_bias
            # the PROPS heatmap is a training signal only (DiffusionDet-on-PROPS): not computed in eval mode
            heat = None
            if config.heatmap and self.training:
                coarsest = max(config.levels)
                heat = self.heatmap(fused if config.heatmap_level == "finest"
                                    else self.project[str(coarsest)](pyramid[coarsest].float()))
            return {"logits": logits, "boxes": boxes, "heatmap": heat}

    return SetDetector()


def detection_loss(out: dict, targets: list[dict], weights: LossWeights = LossWeights()) -> dict:
    """Hungarian-matched focal, L1 and GIoU losses (and the heatmap MSE when the detector has the
    auxiliary head); ``total`` is their weighted sum."""
    import torch.nn.functional as F

    from .matching import heatmap_targets, hungarian_match, set_losses

    device = out["logits"].device
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    matches = hungarian_match(out["logits"], out["boxes"], targets, weights)
    parts = set_losses(out["logits"], out["boxes"], targets, matches, weights.alpha, weights.gamma)
    total = weights.class_loss * parts["focal"] + weights.l1 * parts["l1"] + weights.giou * parts["giou"]
    if out.get("heatmap") is not None:
        heat = out["heatmap"]
        wanted = heatmap_targets(targets, heat.shape[1], tuple(heat.shape[-2:]), weights.min_radius, weights.rho,
                                 weights.sigma_rule)
        parts["heatmap"] = F.mse_loss(heat, wanted.to(heat))
        total = total + weights.heatmap * parts["heatmap"]
    parts["total"] = total
    return parts


DECODINGS = ("best_class", "topk")


def detections(out: dict, threshold: float, image_size: int, nms_iou: float = NMS_IOU, decoding: str = "best_class",
               top_k: int = 100, named: list[bool] | None = None) -> list[list[tuple]]:
    """Per image, ``(class index, score, [x, y, w, h] in pixels, clipped to the image)`` of the
    kept (query, class) pairs, by ``decoding``:

    - ``best_class``: each query's best class, if it scores ``threshold`` or more (at most one
      box per query);
    - ``topk``: DINO's post-processing, the ``top_k`` best (query, class) pairs over all queries
      and classes, those scoring ``threshold`` or more (a query may give boxes of two classes).

    ``named`` (one bool per class column, default all True) marks the columns whose boxes are
    wanted; the others only compete. Under ``best_class`` a query whose best class is unnamed
    gives no box; under ``topk`` unnamed pairs are left out before the ``top_k`` are taken, so
    they never use up its slots.

    A class-wise NMS at ``nms_iou`` then drops the rare duplicate that one-to-one matching leaves
    early in training. Scores are sigmoid probabilities (float in [0, 1]).

    ``best_class`` is the heads' default. Measured on the shipped adapter (BENCHMARKS.md, "Paper
    fidelity", 48 + 48 images), ``topk`` is within noise on AP50 (+0.004 / +0.002) and 0.010 lower
    in F1 at delta 0.3 (extra second-class boxes)."""
    import torch
    from torchvision.ops import batched_nms, box_convert

    if decoding not in DECODINGS:
        raise ValueError(f"decoding: expected one of {DECODINGS}, got {decoding!r}")
    probs = out["logits"].detach().float().sigmoid()
    boxes = box_convert(out["boxes"].detach().float() * image_size, "cxcywh", "xyxy").clamp(0, image_size)
    wanted = torch.ones(probs.shape[2], dtype=torch.bool, device=probs.device) if named is None else \
        torch.tensor(named, dtype=torch.bool, device=probs.device)
    if decoding == "best_class":
        scores, classes = probs.max(-1)
        queries = torch.arange(probs.shape[1], device=probs.device).expand(len(probs), -1)
    else:
        probs = probs.masked_fill(~wanted, -1.0)  # below any threshold: an unnamed pair is never kept
        scores, flat = probs.flatten(1).topk(min(top_k, probs.shape[1] * probs.shape[2]), dim=-1)
        queries, classes = flat // probs.shape[2], flat % probs.shape[2]
    found = []
    for b in range(len(scores)):
        picked = boxes[b, queries[b]]
        sides = picked[:, 2:] - picked[:, :2]
        keep = torch.nonzero((scores[b] >= threshold) & wanted[classes[b]] & (sides > 0).all(-1)).flatten()
        keep = keep[batched_nms(picked[keep], scores[b, keep], classes[b, keep], nms_iou)]
        xywh = box_convert(picked[keep], "xyxy", "xywh")
        found.append([(int(c), float(s), [float(v) for v in box])
                      for c, s, box in zip(classes[b, keep], scores[b, keep], xywh)])
    return found
