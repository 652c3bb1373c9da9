"""The small shapes CLIP: a tiny random one trains, resumes exactly, exports as a standard
transformers CLIP folder, and the zero-shot eval and scores run on it."""

import json
import os

import numpy as np
import pytest
from safetensors.torch import load_file

from engine.lab.train.clip import ClipRecipe, train_clip
from engine.world import CLASSES

TINY = ClipRecipe(steps=4, batch_size=8, warmup=1, checkpoint_every=2, vision_width=32, vision_layers=1,
                  eval_images=3)


def quiet(*_):
    pass


def checkpoint_weights(folder):
    folder = os.path.join(folder, "ckpt")
    return {k: v for n in sorted(os.listdir(folder)) if n.endswith(".safetensors")
            for k, v in load_file(os.path.join(folder, n)).items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP trained straight through its 4 steps, exported (with its card) to ``model/``."""
    out = str(tmp_path_factory.mktemp("clip") / "straight")
    assert train_clip(out, TINY, echo=quiet) == {"step": 4, "exported": True}
    return out


def test_training_resumes_to_the_same_state(trained, tmp_path):
    resumed = str(tmp_path / "resumed")
    assert train_clip(resumed, TINY, until_step=2, echo=quiet) == {"step": 2, "exported": False}
    assert not os.path.exists(os.path.join(resumed, "model"))
    assert train_clip(resumed, TINY, echo=quiet) == {"step": 4, "exported": True}

    a, b = checkpoint_weights(trained), checkpoint_weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    # Same data and augmentation after a resume (drawn from (seed, step)); a reloaded optimizer
    # rounds differently in the last bits, while other data would differ by ~1e-3.
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, f"resumed training diverged from uninterrupted training (max diff {worst})"
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for _, _, files in os.walk(resumed)
                   for name in files), "checkpoints must be safetensors, never pickles"


def test_export_is_a_standard_clip_folder_fed_as_in_training(trained):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from engine.lab.train.oracle import to_input
    from engine.models.tokenizer import build_tokenizer
    from engine.world import render_scene

    folder = os.path.join(trained, "model")
    assert os.path.exists(os.path.join(folder, "model.safetensors"))
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    stored = load_file(os.path.join(folder, "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}, "stored in fp16 to halve the size"
    assert model.dtype == torch.float32, "a plain from_pretrained must give fp32 on CPU"
    images = np.stack([render_scene(seed).image for seed in range(2)])
    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    assert pixels.shape == (2, 3, 64, 64)
    assert torch.allclose(pixels, to_input(images), atol=1e-5), "the processor must feed what training fed"
    prompt = "a photograph of a star and a ring"
    ids = processor(text=[prompt], padding="max_length", return_tensors="pt").input_ids
    assert ids.tolist() == build_tokenizer()([prompt], padding="max_length", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert model(input_ids=ids, pixel_values=pixels).logits_per_image.shape == (2, 1)
    card = open(os.path.join(folder, "README.md")).read()
    assert "| embedded model's world (19-35 px) |" in card and "| 1 |" in card


def test_zero_shot_and_scores_on_the_exported_model(trained):
    from engine.lab.metrics.clip import image_similarity, image_text_scores, load_clip, zero_shot_accuracy
    from engine.world import render_scene

    folder = os.path.join(trained, "model")
    result = zero_shot_accuracy(folder, images_per_class=2)
    assert list(result["per_class"]) == list(CLASSES)
    assert all(0 <= v <= 1 for v in result["per_class"].values()) and 0 <= result["mean"] <= 1

    clip = load_clip(folder)
    images = np.stack([render_scene(seed).image for seed in range(3)])
    scores = image_text_scores(clip, images, ["a photograph of a star", "a ring"])
    assert scores.shape == (3, 2) and scores.dtype == np.float32 and np.all(np.abs(scores) <= 1 + 1e-5)
    similarity = image_similarity(clip, images, images[:2])
    assert similarity.shape == (3, 2) and np.allclose(np.diag(similarity[:2]), 1, atol=1e-5)


def test_bad_numbers_are_refused_with_exit_2():
    import subprocess

    from .conftest import DDE

    proc = subprocess.run([DDE, "train", "clip", "--out", "x", "--steps", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "argument --steps: expected" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_batches_hold_the_asked_share_of_single_object_scenes():
    from dataclasses import replace

    from engine.lab.train.clip import _batch
    from engine.models.tokenizer import build_tokenizer

    recipe = replace(TINY, single_object_share=0.5)
    pixels, ids, present = _batch(recipe, 3, build_tokenizer())
    assert pixels.shape == (8, 3, 64, 64) and ids.shape[0] == 8 and present.shape == (8, len(CLASSES))
    assert (present[4:].sum(1) == 1).all(), "the last half of the batch must be single-object scenes"
    everything_single = _batch(replace(TINY, single_object_share=1.0), 3, build_tokenizer())[2]
    assert (everything_single.sum(1) == 1).all()


def test_a_run_without_checkpoint_warm_starts_from_an_exported_folder(trained, tmp_path):
    from transformers import CLIPModel

    exported = CLIPModel.from_pretrained(os.path.join(trained, "model")).state_dict()
    out = str(tmp_path / "warm")
    assert train_clip(out, TINY, until_step=1, init_from=os.path.join(trained, "model"), echo=quiet)["step"] == 1
    weights = checkpoint_weights(out)
    # One step of AdamW at the warm-up's lr moves a weight by ~1e-4; a fresh init would differ by ~1e-1.
    worst = max((weights[f"clip.{k}"] - v).abs().max().item() for k, v in exported.items() if v.is_floating_point())
    assert worst < 1e-2, f"the warm start did not load the exported weights (max diff {worst})"
    assert "warm start" in open(os.path.join(out, "sessions.json")).read()


def test_freeze_text_trains_the_image_tower_and_keeps_the_text_tower_bit_identical(trained, tmp_path):
    from dataclasses import replace

    from transformers import CLIPModel

    start = os.path.join(trained, "model")
    out = str(tmp_path / "frozen")
    assert train_clip(out, replace(TINY, freeze_text=True), init_from=start, echo=quiet)["exported"]
    before, after = (CLIPModel.from_pretrained(f).state_dict() for f in (start, os.path.join(out, "model")))
    text = [k for k in before if k.startswith(("text_model.", "text_projection."))]
    assert text and all(before[k].equal(after[k]) for k in text), "a frozen text tower must export unchanged"
    moved = [k for k in before if k.startswith("vision_model.") and not before[k].equal(after[k])]
    assert moved, "the image tower did not train"
    tokenizer = json.load(open(os.path.join(out, "model", "tokenizer.json")))
    assert tokenizer["padding"] is None and tokenizer["truncation"] is None, "exported with training's padding"
    # a continuation's recipe kept beside the first run's is listed in the card
    from engine.lab.train.clip import write_clip_card

    with open(os.path.join(out, "recipe-stage2.json"), "w") as f:
        f.write('{"freeze_text": true}')
    write_clip_card(out)
    assert 'Continued by `recipe-stage2.json`' in open(os.path.join(out, "model", "README.md")).read()


def test_a_missing_init_folder_is_refused_with_exit_2(tmp_path):
    import subprocess

    from .conftest import DDE

    proc = subprocess.run([DDE, "train", "clip", "--out", str(tmp_path / "x"), "--init-from", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "argument --init-from: expected a CLIP folder" in proc.stderr
    assert not os.path.exists(tmp_path / "x")


def test_freeze_text_is_kept_from_the_folder_unless_a_flag_says_otherwise():
    from engine.cli import _parser

    def freeze(*flags):
        return _parser().parse_args(["train", "clip", "--out", "x", *flags]).freeze_text

    assert (freeze(), freeze("--freeze-text"), freeze("--no-freeze-text")) == (None, True, False)

