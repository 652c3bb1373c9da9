"""Random-weight Stable Diffusion and SDXL pipelines built from component configs (no hub, no
weights): tests use tiny ones, ``bench/bench_gpu.py`` the public SD 2.1-base and SDXL ones
(``bench/configs/*.json``): throughput does not depend on the weights.

A config file is one JSON object::

    {"architecture": "sd" | "sdxl",
     "unet": {UNet2DConditionModel kwargs}, "vae": {AutoencoderKL kwargs},
     "text_encoder": {CLIPTextConfig kwargs}, "text_encoder_2": {CLIPTextConfig kwargs, SDXL only},
     "scheduler": {DPMSolverMultistepScheduler kwargs}}

The tokenizer is the embedded world's CLIP tokenizer (``models.tokenizer.build_tokenizer``) with
the text encoder's context length, so the encoders' vocabulary size and special ids are set from
it (the public vocabularies are not reachable offline; a smaller embedding table changes no
UNet cost).
"""

from __future__ import annotations

import json

__all__ = ["build_random_pipeline", "load_config", "save_random_pipeline"]


def load_config(path: str) -> dict:
    with open(path) as f:
        config = json.load(f)
    if config.get("architecture") not in ("sd", "sdxl"):
        raise ValueError(f"{path}: expected architecture 'sd' or 'sdxl', got {config.get('architecture')!r}")
    return config


def build_random_pipeline(config: dict, *, seed: int = 0, device: str = "cpu", dtype=None):
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` with random weights on
    ``device`` (modules are created there: an SDXL UNet in fp32 is 10 GB, so build big ones on
    the GPU) in ``dtype`` (default fp32)."""
    import torch
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..models.tokenizer import build_tokenizer

    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    context = config["text_encoder"].get("max_position_embeddings", 77)
    tokenizer = build_tokenizer(max_length=context)

    def text_config(kwargs: dict) -> CLIPTextConfig:
        return CLIPTextConfig(**{**kwargs, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                                 "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id})

    def cast(module):
        return module if dtype == torch.float32 else module.to(dtype)

    with torch.device(device):
        unet = cast(UNet2DConditionModel(**config["unet"]))
        vae = cast(AutoencoderKL(**config["vae"]))
        text = cast(CLIPTextModel(text_config(config["text_encoder"])))
        text_2 = (cast(CLIPTextModelWithProjection(text_config(config["text_encoder_2"])))
                  if config["architecture"] == "sdxl" else None)
    scheduler = DPMSolverMultistepScheduler(**config.get("scheduler", {}))
    if text_2 is not None:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer,
                                         tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                         add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_random_pipeline(config: dict, folder: str, **kwargs) -> str:
    """``build_random_pipeline`` saved as a diffusers folder (safetensors): what ``dde run`` loads."""
    pipe = build_random_pipeline(config, **kwargs)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
