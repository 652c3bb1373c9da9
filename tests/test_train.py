"""The embedded model's training recipe: a few steps, checkpoints, exact resume; and the shipped weights."""

import json
import os

import numpy as np
import pytest
from safetensors.torch import load_file

from engine.lab.train.diffusion import DiffusionRecipe, train_diffusion
from engine.models.embedded import EMBEDDED_MODELS
from engine.models.shipped import ORACLE_DIR

TINY = DiffusionRecipe(vae_steps=3, unet_steps=4, vae_batch_size=4, batch_size=4, latent_pool=16,
                       checkpoint_every=2, warmup=1)


def unet_weights(folder):
    folder = os.path.join(folder, "ckpt-unet")
    return {k: v for n in sorted(os.listdir(folder)) if n.endswith(".safetensors")
            for k, v in load_file(os.path.join(folder, n)).items()}


def test_training_checkpoints_and_resumes_exactly(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert train_diffusion(straight, TINY, echo=lambda *_: None)["exported"]

    first = train_diffusion(resumed, TINY, until_step=2, echo=lambda *_: None)
    assert first == {"vae_done": True, "unet_step": 2, "exported": False}
    assert not os.path.exists(os.path.join(resumed, "model"))
    second = train_diffusion(resumed, TINY, echo=lambda *_: None)
    assert second["unet_step"] == 4 and second["exported"]

    a, b = unet_weights(straight), unet_weights(resumed)
    assert a.keys() == b.keys()
    # The same data and noise after a resume (drawn from (seed, step)); reloaded optimizer
    # state rounds differently in the last bits (~1e-7), while a resume that draws other
    # data differs by ~1e-3.
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, f"resumed training diverged from uninterrupted training (max diff {worst})"
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for _, _, files in os.walk(resumed)
                   for name in files), "checkpoints must be safetensors, never pickles"


def test_warm_start_with_the_frozen_clip_text_encoder_resumes(tmp_path):
    """v2's recipe: VAE and UNet from an exported model, the small CLIP's text tower frozen; a
    stopped run continues, and the export carries the CLIP text tower unchanged."""
    from transformers import CLIPModel

    from engine.lab.train.diffusion import train_diffusion
    from engine.models.shipped import CLIP_DIR

    v1 = str(tmp_path / "v1")
    assert train_diffusion(v1, TINY, echo=lambda *_: None)["exported"]
    recipe = DiffusionRecipe(**{**vars(TINY), "text_encoder": "frozen-clip", "init_from": f"{v1}/model"})
    v2 = str(tmp_path / "v2")
    assert train_diffusion(v2, recipe, until_step=2, echo=lambda *_: None)["unet_step"] == 2
    assert not os.path.exists(os.path.join(v2, "ckpt-vae")), "a warm start takes the VAE as it is"
    assert train_diffusion(v2, recipe, echo=lambda *_: None) == {"vae_done": True, "unet_step": 4, "exported": True}
    exported = load_file(os.path.join(v2, "model", "text_encoder", "model.safetensors"))
    clip = CLIPModel.from_pretrained(CLIP_DIR).text_model.state_dict()
    assert all(np.allclose(exported[f"text_model.{k}"].float(), v.float()) for k, v in clip.items()
               if f"text_model.{k}" in exported), "the frozen text encoder changed"
    assert load_file(os.path.join(v2, "model", "vae", "diffusion_pytorch_model.safetensors")).keys()
    for part in ("vae", "unet"):  # the warm start's source path is this machine's, not the model's
        assert "_name_or_path" not in json.load(open(os.path.join(v2, "model", part, "config.json")))


def test_an_unknown_text_encoder_is_refused_before_anything_is_written(tmp_path):
    from engine.errors import UserError

    with pytest.raises(UserError, match="text_encoder: expected one of train, frozen-clip, got 'openai'"):
        train_diffusion(str(tmp_path / "run"), DiffusionRecipe(text_encoder="openai"), echo=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_a_broken_recipe_in_the_training_folder_is_one_line_and_exit_2(tmp_path):
    import subprocess

    from .conftest import DDE

    (tmp_path / "recipe.json").write_text('{"batch_size": 4, "no_such_field": 1}')
    proc = subprocess.run([DDE, "train", "diffusion", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--out: expected a training folder whose recipe.json" in proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_a_rerun_continues_with_the_folders_recipe(tmp_path):
    """`dde train diffusion --out DIR` with no recipe flags keeps DIR's recipe (here: its batch size)."""
    import json
    import subprocess

    from .conftest import DDE

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({**vars(TINY), "unet_steps": 2, "vae_steps": 1}))
    proc = subprocess.run([DDE, "train", "diffusion", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "recipe.json").read_text())["batch_size"] == TINY.batch_size
    assert json.loads(proc.stdout.strip().splitlines()[-1])["unet_step"] == 2


@pytest.mark.skipif(not os.path.exists(os.path.join(EMBEDDED_MODELS["shapes"], "model_index.json")),
                    reason="embedded:shapes weights are not trained yet (dde train diffusion --export)")
def test_embedded_model_generates_real_images():
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.records import ImageRequest

    backend = DiffusionBackend(params=DiffusionParams(model="embedded:shapes", steps=15), classes=[])
    out = backend.generate([ImageRequest(0, 1, "a photograph of a red circle"),
                            ImageRequest(1, 2, "a photograph of a blue square and a yellow star")])
    for generated in out:
        image = generated.image.astype(float)
        assert generated.reject is None and image.shape == (64, 64, 3)
        assert image.std() > 10, "a flat image"
        assert len(np.unique(generated.image.reshape(-1, 3), axis=0)) > 20, "too few colours: degenerate"
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(EMBEDDED_MODELS["shapes"]) for f in fs)
    assert size <= 25 * 2**20


@pytest.mark.skipif(not os.path.exists(os.path.join(ORACLE_DIR, "classifier.safetensors")),
                    reason="the oracle is not trained yet (dde train oracle)")
def test_shipped_oracle_recognises_rendered_scenes():
    import torch

    from engine.lab.train.oracle import load_oracle, rendered_set, to_input

    images, labels = rendered_set(31_337, 200)
    with torch.no_grad():
        predicted = torch.sigmoid(load_oracle()(to_input(images))).numpy() > 0.5
    assert (predicted == labels).mean() > 0.95


@pytest.mark.parametrize("args", [["train", "oracle", "--steps", "0"],
                                  ["train", "diffusion", "--out", "x", "--unet-steps", "-1"],
                                  ["bench", "fidelity", "--per-class", "1"], ["bench", "fidelity", "--guidance-scale", "x"]])
def test_bad_numbers_are_refused_with_exit_2(args):
    import subprocess

    from .conftest import DDE

    proc = subprocess.run([DDE, *args], capture_output=True, text=True)
    assert proc.returncode == 2 and f"argument {args[-2]}: expected" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_trainers_run_without_the_job_stack():
    """The GPU command (training/diffusion/continue_on_gpu.sh) runs where only torch, transformers and
    diffusers are installed: training imports neither Ray, pydantic nor pycocotools."""
    import subprocess
    import sys

    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"ray", "pydantic", "pycocotools", "s3fs", "pyarrow"}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import engine.cli
from engine.lab.train.data import render_batch
from engine.lab.train.diffusion import DiffusionRecipe, train_diffusion
images, scenes = render_batch(0, 0, 2, DiffusionRecipe().world())
print(images.shape)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "(2, 64, 64, 3)" in proc.stdout, proc.stderr[-2000:]
