"""``attention``: semantic masks with an uncertainty band from the model's own attention
(Dataset Diffusion): class-prompt cross-attention refined by self-attention raised to tau,
thresholded at alpha/beta (Eq. 5); instances are the connected components of each class. With a
``region_clip`` (by default the shapes CLIP on embedded:shapes), each instance's class is then
re-chosen among those its prompt names, from a crop of it (``maps.region_classes``; not in the paper),
and the instances are the components of the mask so relabelled: where the attention split one
object between two classes and the CLIP names both parts alike, the object is one instance.

Works with any backend that offers ``diffusers_pipeline``, ``attention_capture`` and
``step_callbacks`` (the ``diffusion`` backend, on any SD-architecture model): the head attaches
an ``AttentionStore`` to the backend's UNet, which records during sampling.
"""

from __future__ import annotations

import json
import math
import os
from typing import Literal

from pydantic import Field, model_validator

from ...backends.base import ATTENTION_CAPTURE, DIFFUSERS_PIPELINE, STEP_CALLBACKS, StepObserver, StrictParams
from ...records import Generated, ImageRequest, Instance, Labels, category_ids, semantic_dtype
from ...spec import JobSpec, require_ordered
from ..base import Head
from ..clip_regions import VILD_WEIGHT

__all__ = ["AttentionHead", "AttentionCaptureHead", "CaptureParams"]


class CaptureParams(StrictParams):
    cross_resolutions: list[int] | None = Field(
        default=None, description="Latent sides whose class cross-attention is averaged. Default: 16 for SD "
                                  "512-px models (latent 64), the two largest attention sides for smaller latents.")
    self_resolution: int | None = Field(
        default=None, description="Latent side of the self-attention used for refinement. Default: 32 for SD "
                                  "512-px models, the largest attention side for smaller latents.")
    timesteps: tuple[float, float] | None = Field(
        default=None, description="Share of the denoising schedule to average over; 0 is the noisiest step. Default: "
                                  "all of it (0, 1) for SD 512-px models, as Dataset Diffusion; the later half "
                                  "(0.5, 1) for smaller latents (embedded:shapes: up to +0.04 mIoU on txt2img, BENCHMARKS.md).")
    blocks: list[Literal["down", "mid", "up"]] | None = Field(
        default=None, min_length=1,
        description="UNet parts whose attention layers are captured. Default: all of them (Dataset Diffusion, and "
                    "the bca head); for the attention head on smaller latents the up blocks alone when they hold "
                    "the captured sides (embedded:shapes: self-attention's gain +0.050 to +0.064 mIoU, mean of two "
                    "seeds; all blocks +0.035 to +0.039; BENCHMARKS.md).")
    cross_keys: Literal["generation", "start_and_classes", "prompt"] = Field(
        default="generation", description="Keys of the class cross-attention softmax: the class tokens of the prompt "
                                          "the image is generated from, with its start token (classes it does not "
                                          "name appended, as Dataset Diffusion); or those of a separate class-only "
                                          "prompt (start_and_classes), or all of its tokens (prompt).")
    min_area: float = Field(default=0.005, gt=0, lt=1, description="Smallest instance, as a share of the image.")

    @model_validator(mode="after")
    def _timestep_range(self) -> "CaptureParams":
        if self.timesteps is None:
            return self
        lo, hi = self.timesteps
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"expected 0 <= timesteps[0] < timesteps[1] <= 1, got {list(self.timesteps)}")
        return self


def _sd_scale(unet_config: dict) -> bool:
    """An SD 512-px UNet (latent 64 or more), the scale Dataset Diffusion's settings were chosen at."""
    return unet_config["sample_size"] >= 64


def capture_config(params: CaptureParams, unet_config: dict, with_self: bool):
    """What to capture: the configured resolutions and timesteps, or defaults for the model's latent size."""
    from . import CaptureConfig, attention_resolutions

    sides = attention_resolutions(unet_config)
    if _sd_scale(unet_config):  # Dataset Diffusion's Table 4 best, averaged over every timestep (its Table 6)
        cross_default, self_default = [unet_config["sample_size"] // 4], unet_config["sample_size"] // 2
        timesteps_default = (0.0, 1.0)
    else:  # small latents: the finest layers still hold only a few cells per object, and the noisier half of
        # the schedule blurs the class maps of a 16x16 latent (measured on embedded:shapes, BENCHMARKS.md)
        cross_default, self_default, timesteps_default = sides[:2], sides[0], (0.5, 1.0)
    cross = tuple(params.cross_resolutions or cross_default)
    self_side = (params.self_resolution or self_default) if with_self else None
    return CaptureConfig(cross_resolutions=cross, self_resolution=self_side,
                         timesteps=tuple(params.timesteps or timesteps_default),
                         blocks=tuple(params.blocks or _default_blocks(unet_config, cross, self_side)),
                         cross_keys=params.cross_keys)


def _default_blocks(unet_config: dict, cross: tuple[int, ...], self_side: int | None) -> tuple[str, ...]:
    """Every block, but for self-attention refinement on small latents the decoder (up) blocks alone where
    they hold every captured side: there the encoder's and the bottleneck's maps blur the class maps that
    self-attention then spreads (embedded:shapes: tau 1's gain over tau 0, mean of seeds 0 and 1,
    +0.050 / +0.056 / +0.064 on txt2img / img2img / default-world img2img, all blocks +0.035 / +0.038 / +0.039;
    BENCHMARKS.md). Cross-attention alone (bca) keeps every block: its boxes lose up to 0.04 AP50 with the up
    blocks alone."""
    from . import ALL_BLOCKS, attention_resolutions

    wanted = {*cross, self_side} - {None}
    if self_side is None or _sd_scale(unet_config) or not wanted <= set(attention_resolutions(unet_config, ("up",))):
        return ALL_BLOCKS
    return ("up",)


def default_tau(params, unet_config: dict) -> int:
    """``params.tau``, else the self-attention exponent for the model's scale: Dataset Diffusion's 4 on SD
    512-px models; 1 on smaller latents, where each step of Eq. 3 spreads a map over a larger share of the
    image (the best of tau 0-5 on embedded:shapes, BENCHMARKS.md)."""
    if params.tau is not None:
        return params.tau
    return 4 if _sd_scale(unet_config) else 1


def _local_unet_config(model: str) -> dict | None:
    """The UNet config of a local or embedded model (None for a hub id: checked when loaded)."""
    from ...errors import UserError
    from ...models import is_hub_id, resolve_model

    if is_hub_id(model):
        return None
    try:
        path = os.path.join(resolve_model(model), "unet", "config.json")
    except UserError:
        return None  # the backend reports the model itself
    with open(path) as f:
        return json.load(f)


class AttentionCaptureHead(Head, StepObserver):
    """A head that labels from the UNet's attention, captured while the backend samples."""

    Params = CaptureParams
    requires = frozenset({DIFFUSERS_PIPELINE, ATTENTION_CAPTURE, STEP_CALLBACKS})
    uses_self_attention = True
    builds_class_prompts = True
    extras_key = "attention"  # where the captured maps go in Generated.extras (one key per capturing head)

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        from . import check_resolutions

        unet_config = _local_unet_config(spec.generator.config.model)  # diffusers_pipeline: params name the model
        if unet_config is None:
            return []
        config = capture_config(spec.label_head.config, unet_config, cls.uses_self_attention)
        problem = check_resolutions(unet_config, config)
        return [problem] if problem else []

    def attach(self, backend) -> None:
        from . import AttentionStore

        unet = backend.pipe.unet
        self.store = AttentionStore(capture_config(self.params, unet.config, self.uses_self_attention))
        self.store.install(unet)
        backend.observers.append(self)
        self.category_id = category_ids(c.name for c in self.classes)
        self.class_words = {c.name: c.words for c in self.classes}

    # ---- StepObserver
    def begin_batch(self, pipe, requests: list[ImageRequest], start_steps: list[int], steps: int) -> None:
        from . import encode_class_prompts

        self._classes = [list(dict.fromkeys(r.classes)) for r in requests]
        self.store.begin(*encode_class_prompts(pipe, self._classes, self.store.config.cross_keys,
                                               [r.prompt for r in requests], self.class_words), start_steps, steps)

    def end_batch(self) -> list[dict]:
        return [{self.extras_key: {**maps, "classes": names}} for maps, names in zip(self.store.end(), self._classes)]

    # ---- labelling
    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        return [self.label_one(g) if g.image is not None and g.extras.get(self.extras_key, {}).get("classes")
                else Labels([]) for g in generated]

    def label_one(self, generated: Generated) -> Labels:
        raise NotImplementedError

    def min_pixels(self, height: int, width: int) -> int:
        return max(1, math.ceil(self.params.min_area * height * width))


class AttentionParams(CaptureParams):
    tau: int | None = Field(default=None, ge=0, le=16,
                            description="Self-attention exponent (Eq. 3); 0 is cross-attention only. Default: 4 "
                                        "(the paper's) for SD 512-px models, 1 for smaller latents.")
    alpha: float = Field(default=0.5, ge=0, le=1, description="At or below: background (Eq. 5).")
    beta: float = Field(default=0.6, ge=0, le=1,
                        description="At or above: the class; between: uncertain (255; 65535 over 254 classes).")
    region_clip: str = Field(
        default="auto", description="A CLIP that re-chooses each instance's class among those its prompt names, "
                                    "from a crop of the instance (maps.region_classes; not in Dataset Diffusion): "
                                    "where the model drew another of the named shapes, the label follows the "
                                    "drawing. 'auto': the shapes CLIP on embedded:shapes, none on other models; "
                                    "'none'; 'embedded:clip'; or any CLIPModel folder or hub id. Prompts naming one "
                                    "class are left as they are.")
    clip_weight: float = Field(default=VILD_WEIGHT, gt=0, le=1,
                               description="The CLIP's share in the geometric ensemble with the attention's class "
                                           "scores (ViLD's lambda).")

    @model_validator(mode="after")
    def _band(self) -> "AttentionParams":
        return require_ordered(self, "alpha", "beta")


def region_clip(params: AttentionParams, model: str | None) -> str | None:
    """The CLIP that re-chooses classes, or None: 'auto' is the shapes CLIP on embedded:shapes alone
    (its text tower is that model's text encoder; other models' CLIPs are not shipped)."""
    from ...models.clip_embeddings import EMBEDDED_CLIP

    if params.region_clip == "auto":
        return EMBEDDED_CLIP if model == "embedded:shapes" else None
    return None if params.region_clip == "none" else params.region_clip


class AttentionHead(AttentionCaptureHead):
    Params = AttentionParams

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        from ..clip_regions import check_region_clip

        problem = check_region_clip("label_head.params.region_clip", spec.label_head.config.region_clip)
        return super().check_spec(spec) + ([problem] if problem else [])

    def attach(self, backend) -> None:
        super().attach(backend)
        self.tau = default_tau(self.params, backend.pipe.unet.config)
        self.clip, clip = None, region_clip(self.params, getattr(backend.params, "model", None))
        if clip:
            from ...models.clip_embeddings import load_clip
            from ..clip_regions import clip_class_text

            names = [c.name for c in self.classes]
            self.clip = load_clip(clip)
            self.clip[0].to(backend.pipe.device)
            self.clip_text = dict(zip(names, clip_class_text(self.clip, names)))

    def label_one(self, generated: Generated, tau: int | None = None) -> Labels:
        """``tau``: the self-attention exponent, the head's own when None (0 is cross-attention alone,
        which the labels bench scores beside it)."""
        from . import class_maps, semantic_mask

        captured, p = generated.extras[self.extras_key], self.params
        names = captured["classes"]
        maps = class_maps(captured, generated.image.shape[0], self.tau if tau is None else tau)
        mask, objectness = semantic_mask(maps, [self.category_id[n] for n in names], p.alpha, p.beta,
                                         semantic_dtype(len(self.category_id)))
        min_pixels = self.min_pixels(*generated.image.shape[:2])
        instances = self._instances(mask, objectness, names, min_pixels)
        if self.clip is not None and len(names) > 1 and instances:
            mask = self._reclassified(generated.image, maps, names, instances, mask)
            # one object the attention split between two classes is one instance once its parts agree
            instances = self._instances(mask, objectness, names, min_pixels)
        return Labels(instances, semantic=mask)

    def _instances(self, mask, objectness, names: list[str], min_pixels: int) -> list[Instance]:
        """The connected components of each class in ``mask``, scored by their mean objectness."""
        from . import components

        return [Instance(name, region, score) for name in names
                for region, score in components(mask == self.category_id[name], objectness, min_pixels)]

    def _reclassified(self, image, maps, names: list[str], instances: list[Instance], mask):
        """``mask`` with each instance's pixels given the class the CLIP re-chooses (``region_classes``)."""
        import torch

        from . import region_classes

        text = torch.stack([self.clip_text[n] for n in names])
        picks = region_classes(image, maps[:len(names)],  # a batch pads its images' maps to its widest class list
                               [i.mask for i in instances], self.clip, text, self.params.clip_weight)
        mask = mask.copy()
        for instance, pick in zip(instances, picks):
            mask[instance.mask] = self.category_id[names[pick]]
        return mask
