"""Set-prediction detection maths for trained label heads (DiffusionEngine's adapter, DETR/DINO
style) and the PROPS heatmap auxiliary targets. Boxes are normalised (cx, cy, w, h) in [0, 1].

    indices = hungarian_match(logits, boxes, targets)        # per image: (query idx, target idx)
    losses = set_losses(logits, boxes, targets, indices)      # {"focal", "l1", "giou"}
    heat = heatmap_targets(targets, num_classes, size=(h, w)) # (B, C, h, w) Gaussian centres
"""

from __future__ import annotations

__all__ = ["hungarian_match", "set_losses", "heatmap_targets", "MatchCosts", "SIGMA_RULES"]

from dataclasses import dataclass


@dataclass(frozen=True)
class MatchCosts:
    """DINO's matching weights: focal class cost, L1 on boxes, negative GIoU."""

    klass: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0


def _xyxy(boxes):
    from torchvision.ops import box_convert

    return box_convert(boxes, "cxcywh", "xyxy")


def hungarian_match(logits, boxes, targets: list[dict], costs: MatchCosts = MatchCosts()) -> list[tuple]:
    """One-to-one assignment of queries to targets per image (scipy's Hungarian solver).

    ``logits`` (B, Q, C) and ``boxes`` (B, Q, 4); each target is ``{"labels": (n,), "boxes": (n, 4)}``.
    """
    import torch
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import generalized_box_iou

    matches = []
    with torch.no_grad():
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.long, device=logits.device)
                matches.append((empty, empty))
                continue
            prob = logits[b].sigmoid()[:, target["labels"]]  # (Q, n)
            positive = costs.alpha * (1 - prob) ** costs.gamma * -(prob + 1e-8).log()
            negative = (1 - costs.alpha) * prob ** costs.gamma * -(1 - prob + 1e-8).log()
            cost = (costs.klass * (positive - negative) + costs.l1 * torch.cdist(boxes[b], target["boxes"], p=1)
                    - costs.giou * generalized_box_iou(_xyxy(boxes[b]), _xyxy(target["boxes"])))
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.long, device=logits.device),
                            torch.as_tensor(cols, dtype=torch.long, device=logits.device)))
    return matches


def set_losses(logits, boxes, targets: list[dict], matches: list[tuple], alpha: float = 0.25,
               gamma: float = 2.0) -> dict:
    """Sigmoid focal loss over all queries (unmatched ones learn 'nothing here'), and L1 and
    GIoU losses over matched pairs, each normalised by the number of target boxes.

    A target may carry ``scored``, a bool tensor (C,): the classes its image is scored against
    (InstaGen scores each image against its prompt's 1-2 classes only); the focal loss of the
    other classes is left out for that image. Without it every class is scored."""
    import torch
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    count = max(sum(len(t["labels"]) for t in targets), 1)
    onehot = torch.zeros_like(logits)
    for b, (rows, cols) in enumerate(matches):
        onehot[b, rows, targets[b]["labels"][cols]] = 1.0
    focal = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="none")
    if any("scored" in t for t in targets):
        scored = torch.stack([t.get("scored", torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device))
                              for t in targets])
        focal = focal * scored[:, None, :].to(focal)
    focal = focal.sum() / count
    predicted = torch.cat([boxes[b, rows] for b, (rows, _) in enumerate(matches)])
    truth = torch.cat([targets[b]["boxes"][cols] for b, (_, cols) in enumerate(matches)])
    l1 = (predicted - truth).abs().sum() / count
    giou = generalized_box_iou_loss(_xyxy(predicted), _xyxy(truth), reduction="sum") / count
    return {"focal": focal, "l1": l1, "giou": giou}


SIGMA_RULES = ("centernet", "radius")


def heatmap_targets(targets: list[dict], num_classes: int, size: tuple[int, int], min_radius: float = 4.0,
                    rho: float = 0.5, sigma_rule: str = "centernet"):
    """Heatmap targets (PROPS auxiliary head), float32 (B, C, h, w): per class, the max over its
    boxes of a Gaussian at the box centre, peak 1 on the centre cell, radius
    r = max(min_radius, rho * min(w, h)) in heatmap cells. ``sigma_rule``: ``"centernet"``,
    sigma = (2r + 1) / 6 (CenterNet's rule; what the shipped adapter was trained with), or
    ``"radius"``, sigma = r (PROPS, Eq. 1, about 3x wider: paper-fidelity check C7)."""
    import torch

    height, width = size
    heat = torch.zeros(len(targets), num_classes, height, width)
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    for b, target in enumerate(targets):
        for label, (cx, cy, w, h) in zip(target["labels"].tolist(), target["boxes"].tolist()):
            radius = max(min_radius, rho * min(w * width, h * height))
            sigma = (2 * radius + 1) / 6 if sigma_rule == "centernet" else radius
            centre_x, centre_y = min(int(cx * width), width - 1), min(int(cy * height), height - 1)
            blob = torch.exp(-((xs - centre_x) ** 2 + (ys - centre_y) ** 2) / (2 * sigma**2))
            heat[b, label] = torch.maximum(heat[b, label], blob)
    return heat
