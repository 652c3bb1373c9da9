"""Load any Stable-Diffusion-architecture pipeline: ``embedded:NAME``, a local diffusers
folder, or a hub id. One code path for all three, so the embedded model exercises
exactly what SD 2.1 would. Weights load from safetensors only; no remote code.
"""

from __future__ import annotations

import importlib.util
import os

from ..errors import UserError

__all__ = ["resolve_model", "is_hub_id", "local_model_problem", "load_pipeline", "pick_device", "pick_dtype",
           "model_architecture", "ARCHITECTURES"]

# The pipeline classes a model folder's model_index.json may name, by architecture. SD: one CLIP
# text encoder, cross-attention on its hidden states. SDXL (Podell et al. 2023): two text encoders
# whose penultimate hidden states are concatenated for cross-attention, plus "added conditions"
# (the second encoder's pooled embedding and the size/crop time ids, Sec. 2.2).
ARCHITECTURES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def is_hub_id(model: str) -> bool:
    """'org/name' that is neither an embedded model nor a local folder: only a loader can check it."""
    return (not model.startswith("embedded:") and not os.path.isdir(model) and model.count("/") == 1
            and not model.startswith((".", "/")))


def resolve_model(model: str) -> str:
    """A local folder or hub id that ``from_pretrained`` can open; raise UserError otherwise."""
    from .embedded import EMBEDDED_MODELS

    return resolve_folder(model, EMBEDDED_MODELS, "model_index.json", field="generator.params.model",
                          kind="diffusers folder", train="dde train diffusion --out DIR --export",
                          example="stabilityai/stable-diffusion-2-1-base")


def resolve_folder(name: str, embedded: dict[str, str], marker: str, *, field: str, kind: str, train: str,
                   example: str) -> str:
    """``embedded:NAME`` (a folder of ``embedded``), a local folder holding ``marker``, or a hub id
    (downloaded or cached): the folder ``from_pretrained`` opens. UserError naming ``field`` otherwise."""
    if name.startswith("embedded:"):
        folder = embedded.get(name.split(":", 1)[1])
        if folder is None:
            raise UserError(f"{field}: expected one of {['embedded:' + n for n in embedded]}, got {name!r}")
        if not os.path.exists(os.path.join(folder, marker)):
            raise UserError(f"{field}: {name!r} has no weights at {folder}; train them with `{train}`")
        return folder
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, marker)):
            raise UserError(f"{field}: expected a {kind} with {marker}, got {name!r}")
        return name
    if is_hub_id(name):
        return _hub_snapshot(name, field)
    raise UserError(f"{field}: expected 'embedded:shapes', a local {kind} or a hub id like {example!r}, got {name!r}")


def local_model_problem(model: str) -> str | None:
    """Why a local or embedded ``model`` cannot be opened, or None if it can. A hub id is None too:
    only a loader can check it, so it is checked when a worker loads it."""
    if is_hub_id(model):
        return None
    try:
        resolve_model(model)
    except UserError as e:
        return str(e)
    return None


def _hub_snapshot(repo_id: str, field: str = "generator.params.model") -> str:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "tokenizer/*", "*/*.json", "*/*.safetensors"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass  # not in the local cache: try the hub
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:
        raise UserError(f"{field}: expected a reachable hub id, got {repo_id!r} "
                        f"({type(e).__name__}: {str(e)[:200]}); download it on a machine with access and "
                        f"point model: at the local folder, or use 'embedded:shapes'") from e


def model_architecture(folder: str, requested: str = "auto") -> str:
    """'sd' or 'sdxl': ``requested`` if not 'auto', else read from the folder's model_index.json
    (``_class_name``: any StableDiffusionXL* pipeline is SDXL, any other StableDiffusion* one SD; without
    a class name, a ``text_encoder_2`` means SDXL). UserError if the folder names an architecture this loader does not build."""
    import json

    if requested != "auto":
        return requested
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    name = str(index.get("_class_name", ""))
    if name.startswith("StableDiffusionXL") or (not name and "text_encoder_2" in index):
        return "sdxl"
    if name.startswith("StableDiffusion") or not name:
        return "sd"
    raise UserError(f"generator.params.model: expected a Stable Diffusion or SDXL pipeline folder "
                    f"(model_index.json _class_name one of {sorted(ARCHITECTURES.values())}), got {name!r} in "
                    f"{folder}; set generator.params.architecture to 'sd' or 'sdxl' if the layout is one of those")


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str, device: str):
    """fp16/bf16 on GPU, fp32 on CPU (half precision is slow or unsupported there)."""
    import torch

    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[requested]


def load_pipeline(model: str, *, device: str = "auto", dtype: str = "auto", scheduler: str = "dpmsolver++",
                  attention: str = "auto", architecture: str = "auto"):
    """A StableDiffusionPipeline, or a StableDiffusionXLPipeline (``model_architecture``), on
    ``device`` with the chosen scheduler and attention."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = resolve_model(model)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    # diffusers' default low_cpu_mem_usage needs accelerate, and without it warns in every actor
    common = dict(dtype=torch_dtype, use_safetensors=True, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    if model_architecture(folder, architecture) == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False, image_encoder=None,
                                                         feature_extractor=None, **common)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False, **common)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe = pipe.to(device)
    if attention == "xformers" or (attention == "auto" and device.startswith("cuda") and _has_xformers()):
        pipe.enable_xformers_memory_efficient_attention()
    else:  # SDPA (FlashAttention / memory-efficient kernels where torch has them)
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler(name: str, config):
    """The sampler ``name`` (dpmsolver++, ddim, unipc, euler) on a model's training schedule ``config``."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")


def _has_xformers() -> bool:
    try:
        import xformers  # noqa: F401
    except ImportError:
        return False
    return True
