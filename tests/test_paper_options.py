"""The papers' settings as options beside the shipped ones (issue 18): top-k decoding, PROPS'
heatmap sigma and level, DINO's class-loss weight, InstaGen's class-name context, skipping
images without boxes, Dataset Diffusion's class-appended JSONL prompts. The heatmap is a
training signal only: not computed at inference."""

import json

import pytest
import torch

from .test_trained_heads import TARGETS, pyramid, tiny_detector


def test_heatmap_is_computed_in_train_mode_only_and_reads_the_chosen_level():
    model = tiny_detector()
    assert model(pyramid(2))["heatmap"].shape == (2, 3, 8, 8)  # the fused finest map (stride 4 of 32 px)
    assert model.eval()(pyramid(2))["heatmap"] is None  # inference: no wasted heatmap
    coarse = tiny_detector(heatmap_level="coarsest")
    assert coarse(pyramid(2))["heatmap"].shape == (2, 3, 4, 4)  # PROPS' code: the coarsest level
    with pytest.raises(ValueError, match="heatmap_level"):
        tiny_detector(heatmap_level="middle")


def test_topk_decoding_lets_one_query_box_two_classes():
    from engine.heads.boxes.detector import detections

    logits = torch.full((1, 3, 2), -9.0)
    logits[0, 0] = torch.tensor([2.0, 1.0])  # query 0: both classes score over 0.3
    logits[0, 1, 1] = 0.5
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]]])
    out = {"logits": logits, "boxes": boxes}
    best = detections(out, 0.3, 64)[0]
    topk = detections(out, 0.3, 64, decoding="topk")[0]
    assert sorted((c, round(s, 3)) for c, s, _ in best) == [(0, 0.881), (1, 0.622)]
    assert sorted((c, round(s, 3)) for c, s, _ in topk) == [(0, 0.881), (1, 0.622), (1, 0.731)]
    assert detections(out, 0.3, 64, decoding="topk", top_k=1)[0][0][:2] == (0, pytest.approx(0.881, abs=1e-3))

    # an unnamed column (a competitor the job did not ask for) never takes a top-k slot, and under
    # best_class it still wins its query, which then gives no box
    assert detections(out, 0.3, 64, decoding="topk", top_k=1, named=[False, True])[0][0][:2] == \
        (1, pytest.approx(0.731, abs=1e-3))
    assert [c for c, _, _ in detections(out, 0.3, 64, named=[False, True])[0]] == [1]


def test_sigma_radius_is_wider_than_centernet_and_class_weight_scales_the_focal_term():
    from engine.heads.boxes.detector import LossWeights, detection_loss
    from engine.heads.boxes.matching import heatmap_targets

    target = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.375, 0.375]])}]  # 6 cells of 16
    narrow = heatmap_targets(target, 1, (16, 16))[0, 0, 8]
    wide = heatmap_targets(target, 1, (16, 16), sigma_rule="radius")[0, 0, 8]
    assert narrow[8] == wide[8] == 1 and narrow[10] < 0.5 < 0.85 < wide[10]  # sigma 1.5 against 4 cells
    out = tiny_detector(heatmap=False)(pyramid())
    one, two = (detection_loss(out, TARGETS, LossWeights(class_loss=w)) for w in (1.0, 2.0))
    assert torch.isclose(two["total"] - one["total"], one["focal"])


def test_class_template_embeds_the_name_in_context_and_plain_stays_as_before(tiny_model):
    from engine.heads.boxes.text import class_text
    from engine.models import load_pipeline

    pipe = load_pipeline(tiny_model)
    plain, context = class_text(pipe, ["circle", "star"]), class_text(pipe, ["circle", "star"], "a photograph of a {}")
    tokenizer = pipe.tokenizer
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer("circle", add_special_tokens=False).input_ids,
                         tokenizer.eos_token_id]])
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0][0, 1:-1].float().mean(0)
    assert torch.equal(plain[0], before)  # '{}' is exactly the shipped head's embedding
    assert context.shape == plain.shape and not torch.allclose(context, plain)
    with pytest.raises(ValueError, match="exactly one"):
        class_text(pipe, ["circle"], "a photograph")


def test_jsonl_prompts_append_their_classes_when_asked(tmp_path):
    from engine.job.prompts import build_pool
    from engine.spec import fingerprint, parse_spec

    from .conftest import BASE_SPEC

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a red circle by a square.", "classes": ["circle", "square"]}) + "\n" +
                    json.dumps({"prompt": "a quiet room"}) + "\n")
    data = {**BASE_SPEC, "output": str(tmp_path / "o"), "prompts": {"source": "jsonl", "path": str(path)}}
    plain = parse_spec(data)
    appended = parse_spec({**data, "prompts": {**data["prompts"], "append_classes": True}})
    assert [i.prompt for i in build_pool(plain)] == ["a red circle by a square.", "a quiet room"]
    assert [i.prompt for i in build_pool(appended)] == ["a red circle by a square; circle square", "a quiet room"]
    assert fingerprint(parse_spec({**data, "prompts": {**data["prompts"], "append_classes": False}})) == \
        fingerprint(plain) != fingerprint(appended)  # outputs made before the field keep their fingerprint

