"""Set-prediction matching and losses, and heatmap targets, on hand-made boxes."""

import pytest
import torch

from engine.heads.boxes.matching import MatchCosts, heatmap_targets, hungarian_match, set_losses

TRUTH = {"labels": torch.tensor([0, 2, 1]),
         "boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2], [0.5, 0.8, 0.2, 0.2]])}


def predictions(order, confident=True):
    """5 queries: the 3 truths in ``order`` (with their classes) and 2 far-off background boxes."""
    logits = torch.full((1, 5, 3), -6.0)
    boxes = torch.tensor([[[0.9, 0.1, 0.05, 0.05]] * 5])
    for query, t in enumerate(order):
        boxes[0, query] = TRUTH["boxes"][t]
        logits[0, query, TRUTH["labels"][t]] = 6.0 if confident else -6.0
    return logits, boxes


def test_matching_recovers_a_shuffled_assignment():
    logits, boxes = predictions([2, 0, 1])
    (rows, cols), = hungarian_match(logits, boxes, [TRUTH])
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0, 2: 1}
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    (rows, cols), = hungarian_match(logits, boxes, [empty], MatchCosts())
    assert len(rows) == len(cols) == 0


def test_losses_are_zero_for_perfect_boxes_and_grow_with_errors():
    logits, boxes = predictions([2, 0, 1])
    matches = hungarian_match(logits, boxes, [TRUTH])
    perfect = set_losses(logits, boxes, [TRUTH], matches)
    assert perfect["l1"].item() == pytest.approx(0, abs=1e-6) and perfect["giou"].item() == pytest.approx(0, abs=1e-4)
    unsure, _ = predictions([2, 0, 1], confident=False)
    assert set_losses(unsure, boxes, [TRUTH], matches)["focal"] > 100 * perfect["focal"]
    shifted = boxes.clone()
    shifted[0, 0, :2] += 0.1
    worse = set_losses(logits, shifted, [TRUTH], hungarian_match(logits, shifted, [TRUTH]))
    assert worse["l1"].item() == pytest.approx(0.2 / 3, rel=1e-4) and worse["giou"] > 0.1


def test_scored_classes_leave_the_others_out_of_the_focal_loss():
    """InstaGen scores an image against its prompt's classes only: a confident wrong class outside
    them costs nothing; with every class scored the loss is as before."""
    truth = {"labels": TRUTH["labels"][:2], "boxes": TRUTH["boxes"][:2]}  # classes 0 and 2
    clean, boxes = predictions([1, 0])
    logits = clean.clone()
    logits[0, 3, 1] = 6.0  # a background query sure it sees class 1, which the prompt does not name
    matches = hungarian_match(logits, boxes, [truth])
    every = set_losses(logits, boxes, [truth], matches)["focal"]
    assert every > 10 * set_losses(clean, boxes, [truth], matches)["focal"]
    named = set_losses(logits, boxes, [{**truth, "scored": torch.tensor([True, False, True])}], matches)["focal"]
    assert named <= set_losses(clean, boxes, [truth], matches)["focal"]
    scored_all = {**truth, "scored": torch.ones(3, dtype=torch.bool)}
    assert set_losses(logits, boxes, [scored_all], matches)["focal"].item() == pytest.approx(every.item())


def test_training_a_few_steps_reduces_the_loss():
    torch.manual_seed(0)
    queries = torch.nn.Parameter(torch.randn(1, 5, 3 + 4))
    optimizer = torch.optim.AdamW([queries], lr=0.05)

    def total():
        logits, boxes = queries[..., :3], queries[..., 3:].sigmoid()
        losses = set_losses(logits, boxes, [TRUTH], hungarian_match(logits, boxes, [TRUTH]))
        return 2 * losses["focal"] + 5 * losses["l1"] + 2 * losses["giou"]

    first = total().item()
    for _ in range(60):
        optimizer.zero_grad()
        total().backward()
        optimizer.step()
    assert total().item() < 0.3 * first


def test_heatmap_peaks_at_box_centres_with_the_radius_rule():
    small = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.25, 0.5, 0.05, 0.05]])}  # 1.6 cells: min 4
    large = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}     # 16 cells: r = 8
    heat = heatmap_targets([small, large], num_classes=2, size=(32, 32))
    assert heat.shape == (2, 2, 32, 32) and heat[:, 0].max() == 0
    assert heat[0, 1, 16, 8] == 1.0 and heat[1, 1, 16, 16] == 1.0  # peak on the centre cell
    sigma_small, sigma_large = (2 * 4 + 1) / 6, (2 * 8 + 1) / 6
    assert heat[0, 1, 16, 10].item() == pytest.approx(torch.exp(torch.tensor(-4 / (2 * sigma_small**2))).item())
    assert heat[1, 1, 16, 18].item() == pytest.approx(torch.exp(torch.tensor(-4 / (2 * sigma_large**2))).item())
    both = heatmap_targets([{"labels": torch.tensor([0, 0]), "boxes": torch.cat([small["boxes"], large["boxes"]])}],
                           num_classes=1, size=(32, 32))
    assert both[0, 0, 16, 8] == 1.0 and both[0, 0, 16, 16] == 1.0  # overlapping Gaussians keep the max
