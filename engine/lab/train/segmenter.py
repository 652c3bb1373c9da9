"""The segmentation oracle: a small U-Net that gives every pixel of a shapes-world image its
class (0 background, k = 1 + CLASSES.index, the convention of ``Scene.semantic``), trained on
rendered scenes. It stands in for ground-truth masks on generated images, where the renderer
has none: the label-quality benchmark scores label heads against it.

Like the fidelity oracle it trains on rendered scenes of the embedded model's world with
softness and noise; half of each batch also goes through the embedded model's VAE (encode,
decode), so it sees the decoder's texture that every generated image carries.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ...models.embedded import model_world
from ...models.shipped import SEGMENTER_DIR
from ...models.trained import save_trained
from ...output.layout import derive_seed
from ...world import CLASSES, render_scene
from . import flushed_print
from ...models.segmentation import NUM_LABELS, build_segmenter, load_segmenter, segment, to_input
from .oracle import _augment, fit

__all__ = ["build_segmenter", "train_segmenter", "evaluate_segmenter", "load_segmenter", "segment",
           "NUM_LABELS", "VaeRoundTrip"]

VAL_STREAM = 987_654_321  # the oracle's val stream: training draws from seed * 7919 + 11 + step


def rendered_scenes(stream: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N,64,64,3) and semantic label maps (N,64,64) of the model's world."""
    config = model_world()
    scenes = [render_scene(derive_seed(stream, i), None, config) for i in range(count)]
    return np.stack([s.image for s in scenes]), np.stack([s.semantic for s in scenes])


class VaeRoundTrip:
    """The embedded diffusion model's VAE, encode then decode: rendered images with the
    decoder's texture, like every image the diffusion model generates."""

    def __init__(self, folder: str | None = None):
        from diffusers import AutoencoderKL

        from ...models.embedded import EMBEDDED_MODELS

        folder = folder or os.path.join(EMBEDDED_MODELS["shapes"], "vae")
        self.vae = AutoencoderKL.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
        self.vae.eval().requires_grad_(False)

    def __call__(self, x, chunk: int = 64):
        """[-1, 1] float NCHW in, [-1, 1] float NCHW out (the latent mean: no sampling noise)."""
        import torch

        with torch.no_grad():
            return torch.cat([self.vae.decode(self.vae.encode(part).latent_dist.mode()).sample.clamp(-1, 1)
                              for part in x.split(chunk)])

    def images(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC in and out, rounded like a pipeline's output."""
        x = self(to_input(images))
        return x.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def train_segmenter(out: str = SEGMENTER_DIR, steps: int = 3000, batch: int = 32, seed: int = 0,
                    vae_share: float = 0.5, vae_pool: int = 6000, val_images: int = 1000, echo=None) -> dict:
    """Train on fresh rendered scenes; a ``vae_share`` of each batch is drawn instead from a pool of
    ``vae_pool`` scenes round-tripped through the VAE once up front (16 ms a scene on one CPU
    thread: the pool costs what ~250 steps do, online it would add two thirds to every step)."""
    import torch

    echo = echo or flushed_print
    torch.manual_seed(seed)
    model = build_segmenter()
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.time()
    vae = VaeRoundTrip() if vae_share > 0 else None
    if vae is not None:
        pool_images, pool_semantic = rendered_scenes(seed * 7919 + 3, vae_pool)  # a stream of its own
        pool_images = vae.images(pool_images)
        echo(f"segmenter: {vae_pool} VAE round-tripped scenes in {(time.time() - started) / 60:.1f} min")

    def loss_at(step):
        images, semantic = rendered_scenes(seed * 7919 + 11 + step, batch)
        if vae is not None:
            through = np.flatnonzero((torch.rand(batch, generator=generator) < vae_share).numpy())
            drawn = torch.randint(vae_pool, (len(through),), generator=generator).numpy()
            images[through], semantic[through] = pool_images[drawn], pool_semantic[drawn]
        return loss_fn(model(_augment(to_input(images), generator)), torch.from_numpy(semantic).long())

    fit(model, loss_at, steps, 4e-3, "segmenter", echo)
    minutes = round((time.time() - started) / 60, 1)
    metrics = evaluate_segmenter(model.eval(), val_images, vae=vae)
    card = {"classes": list(CLASSES), "labels": ["background", *CLASSES], "steps": steps, "batch": batch,
            "seed": seed, "vae_share": vae_share, "vae_pool": vae_pool if vae else 0, "train_minutes": minutes,
            **metrics}
    save_trained(model, out, "segmenter", card)
    return card


def _scores(conf: np.ndarray, count: int) -> dict:
    from ..metrics.segmentation import iou_table, pixel_accuracy

    miou, per_class = iou_table(conf)
    return {"images": count, "miou": round(miou, 4), "pixel_accuracy": round(pixel_accuracy(conf), 4),
            "iou": {name: None if np.isnan(v) else round(v, 4) for name, v in zip(["background", *CLASSES], per_class)}}


def evaluate_segmenter(model, count: int = 1000, round_trip: bool = True, vae: VaeRoundTrip | None = None) -> dict:
    """mIoU (background and the 6 classes, from one confusion matrix over all pixels), per-class
    IoU and pixel accuracy on rendered val (a seed stream training never sees), as rendered
    and, with ``round_trip``, after a round trip through the embedded model's VAE."""
    from ..metrics.segmentation import confusion

    images, semantic = rendered_scenes(VAL_STREAM, count)
    result = {"rendered_val": _scores(confusion(segment(model, images), semantic, NUM_LABELS), count)}
    if round_trip:
        tripped = (vae or VaeRoundTrip()).images(images)
        result["vae_round_trip_val"] = _scores(confusion(segment(model, tripped), semantic, NUM_LABELS), count)
    return result
