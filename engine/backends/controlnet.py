"""``controlnet``: mask-conditioned generation (Diffusion Synthesis, Sec. 3.2; ControlNet, Zhang et al. 2023).

Each request's reference gives a condition map (``conditions.Condition``, from its COCO masks);
the map, coloured by the configured palette, conditions a segmentation ControlNet through
diffusers' ``StableDiffusionControlNetPipeline`` (``StableDiffusionXLControlNetPipeline`` on an SDXL
model, with a ControlNet made from the SDXL UNet). Everything else is the ``diffusion``
backend's: one pipeline call per batch, one generator per image, per-image retries with new
seeds, and img2img: with ``strength`` below 1 the reference enters the batch at its start step
(the step injection of ``DiffusionBackend``, which is what ``StableDiffusionControlNetImg2ImgPipeline``
computes, with mixed strengths sharing every UNet and ControlNet call), so the reference also
guides colours. The default strength (1, 1) is the paper's setting: layout from the mask,
appearance from the prompt.

The ControlNet: ``embedded:shapes`` (``engine/models/controlnet``, trained by ``dde train
controlnet``), a diffusers ControlNetModel folder (``config.json`` + safetensors) or a hub id.
Its conditioning embedding must downsample by the model's VAE factor (SD: 8, embedded:shapes: 4),
and its blocks must match the UNet; a mismatch is refused at spec time.
"""

from __future__ import annotations

import importlib.util
import json
import os

from pydantic import Field

from .conditions import ConditionParams
from ..errors import UserError
from ..records import Generated, ImageRequest
from .base import CONDITION_MASKS
from .diffusion import DiffusionBackend, DiffusionParams

__all__ = ["ControlNetBackend", "ControlNetParams", "resolve_controlnet"]

FIELD = "generator.params.controlnet"


class ControlNetParams(DiffusionParams):
    controlnet: str = Field(default="embedded:shapes", description="'embedded:shapes', a diffusers ControlNetModel "
                                                                   "folder or a hub id.")
    conditioning_scale: float = Field(default=1.0, ge=0, description="controlnet_conditioning_scale.")
    condition: ConditionParams = Field(default_factory=ConditionParams)
    strength: tuple[float, float] = Field(
        default=(1.0, 1.0), description="img2img encode ratio range per image; 1: txt2img with the condition only.")


def resolve_controlnet(name: str) -> str:
    """A folder ``ControlNetModel.from_pretrained`` opens; UserError (naming the field) otherwise."""
    from ..models.embedded import EMBEDDED_CONTROLNETS
    from ..models.loading import resolve_folder

    return resolve_folder(name, EMBEDDED_CONTROLNETS, "config.json", field=FIELD, kind="ControlNetModel folder",
                          train="dde train controlnet --out DIR --export", example="lllyasviel/control_v11p_sd15_seg")


def _config(folder: str, *parts: str) -> dict:
    with open(os.path.join(folder, *parts)) as f:
        return json.load(f)


def fit_problems(controlnet: dict, unet: dict, vae: dict) -> list[str]:
    """Why a ControlNet (its config) cannot drive a UNet and VAE (theirs); empty if it fits."""
    problems = [f"{FIELD}: expected {key} {unet.get(key)} (the model's UNet), got {controlnet.get(key)}; use a "
                f"ControlNet made from this model's UNet (ControlNetModel.from_unet)"
                for key in ("in_channels", "block_out_channels", "cross_attention_dim", "layers_per_block",
                            "addition_embed_type", "transformer_layers_per_block")
                if key in controlnet and _as_list(controlnet.get(key)) != _as_list(unet.get(key))]
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    embedding = controlnet.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
    if 2 ** (len(embedding) - 1) != factor:
        problems.append(f"{FIELD}: expected a conditioning embedding that downsamples by {factor} (the model's VAE "
                        f"factor: images of {unet['sample_size'] * factor} px, latents of {unet['sample_size']} px), "
                        f"got one that downsamples by {2 ** (len(embedding) - 1)} (conditioning_embedding_out_channels "
                        f"{list(embedding)}); use a ControlNet made for this model, e.g. ControlNetModel.from_unet("
                        f"unet, conditioning_embedding_out_channels={tuple(16 * 2 ** k for k in range(len(vae['block_out_channels'])))})")
    return problems


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


class ControlNetBackend(DiffusionBackend):
    Params = ControlNetParams
    # the diffusion backend's pipeline, UNet and step callbacks, plus each image's condition as labels
    offers = DiffusionBackend.offers | {CONDITION_MASKS}

    def __init__(self, *, params: ControlNetParams, classes):
        from .conditions import palette_colours, palette_indices

        super().__init__(params=params, classes=classes)
        self.indices, problems = palette_indices(params.condition, classes)
        if problems:  # checked at spec time; a worker never starts with a bad mapping
            raise UserError("; ".join(problems))
        self.colours = palette_colours(params.condition.palette)

    def _load_pipeline(self):
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

        from ..models.conditioning import is_sdxl

        base = super()._load_pipeline()
        controlnet = ControlNetModel.from_pretrained(resolve_controlnet(self.params.controlnet), use_safetensors=True,
                                                     torch_dtype=base.unet.dtype,
                                                     low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
        # the base pipeline's own modules, scheduler and attention settings, plus the ControlNet
        if is_sdxl(base):
            pipe = StableDiffusionXLControlNetPipeline(**base.components, controlnet=controlnet.to(base.device),
                                                       add_watermarker=False)
        else:
            pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet.to(base.device),
                                                     requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def model_name(self) -> str:
        return f"{self.params.model} + ControlNet {self.params.controlnet}"

    @classmethod
    def check_spec(cls, spec) -> list[str]:
        from ..models import is_hub_id, resolve_model
        from .conditions import palette_indices

        params = spec.generator.config
        problems = super().check_spec(spec) + palette_indices(params.condition, spec.class_specs)[1]
        if spec.prompts.source != "references":
            problems.append(f"prompts.source: expected 'references' (their masks give the condition maps), got "
                            f"{spec.prompts.source!r}")
        if is_hub_id(params.controlnet) or problems:
            return problems
        try:
            folder = resolve_controlnet(params.controlnet)
        except UserError as e:
            return problems + [str(e)]
        if is_hub_id(params.model):
            return problems
        model = resolve_model(params.model)
        return fit_problems(_config(folder, "config.json"), _config(model, "unet", "config.json"),
                            _config(model, "vae", "config.json"))

    def generate(self, requests: list[ImageRequest]) -> list[Generated]:
        for r in requests:  # the condition at the generated image's size: what conditions it and what labels it
            r.condition = r.condition.fitted(self.size, self.params.reference_resize)
        generated = super().generate(requests)
        names = [c.name for c in self.classes]
        for r, g in zip(requests, generated):  # capability condition_masks: the condition as labels
            g.extras["condition_masks"] = r.condition.labels(names)
        return generated

    def _conditioning_warm_up(self) -> dict:
        import torch

        blank = torch.zeros(self.batch_size, 3, self.size, self.size, device=self.pipe.device, dtype=self.pipe.unet.dtype)
        return {"image": blank, "controlnet_conditioning_scale": self.params.conditioning_scale}

    def _conditioning(self, requests: list[ImageRequest]) -> dict:
        import numpy as np
        import torch

        from .conditions import condition_image

        images = np.stack([condition_image(r.condition, self.indices, self.colours) for r in requests])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        return {"image": pixels.to(self.pipe.device, self.pipe.unet.dtype),
                "controlnet_conditioning_scale": self.params.conditioning_scale}
