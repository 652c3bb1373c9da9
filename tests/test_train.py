"""The embedded model's training recipe: a few steps, checkpoints, exact resume; and the shipped weights."""

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
