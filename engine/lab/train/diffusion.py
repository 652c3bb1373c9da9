"""``dde train diffusion``: the embedded model, from scratch, on the shapes world.

Phase 1 trains the VAE on rendered images; phase 2 encodes a pool of scenes once and
trains the UNet and text encoder on them, with EMA, v-prediction and min-SNR weighting.
Both phases checkpoint every few hundred steps and resume from the last checkpoint, and
``max_minutes`` stops a phase cleanly so a long run can span several sessions.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np

from ...models.embedded import MODEL_WORLD, model_world
from . import flushed_print
from .checkpoint import drop_origin_paths, load_checkpoint, save_checkpoint
from .data import prompt_variant, render_batch

__all__ = ["DiffusionRecipe", "TEXT_ENCODERS", "train_diffusion", "export_pipeline"]

TEXT_ENCODERS = ("train", "frozen-clip")


@dataclass
class DiffusionRecipe:
    vae_steps: int = 1000
    unet_steps: int = 12000
    vae_batch_size: int = 32
    batch_size: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    latent_pool: int = 24_000
    checkpoint_every: int = 200
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    kl_weight: float = 1e-6
    # The training world (``models.embedded.MODEL_WORLD``)
    max_objects: int = MODEL_WORLD["max_objects"]
    min_scale: float = MODEL_WORLD["min_scale"]
    max_scale: float = MODEL_WORLD["max_scale"]
    # "train": a CLIPTextModel trained from scratch with the UNet (v1); "frozen-clip": the text
    # tower of the small shapes CLIP (engine/models/clip), frozen, as SD freezes OpenAI's CLIP.
    text_encoder: str = "train"
    # An exported embedded model folder to warm-start from: its VAE (the VAE phase is skipped),
    # its UNet when the widths match, its text encoder when ``text_encoder`` is "train".
    init_from: str = ""
    unet_widths: tuple[int, int, int] = (32, 64, 128)
    seed: int = 0

    def world(self):
        return model_world(max_objects=self.max_objects, min_scale=self.min_scale, max_scale=self.max_scale)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _Ema:
    """An exponential moving average of a module's weights, kept as a module (so it checkpoints)."""

    def __init__(self, module, decay: float):
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay

    def update(self, module) -> None:
        import torch

        with torch.no_grad():
            torch._foreach_lerp_(list(self.module.parameters()), list(module.parameters()), 1 - self.decay)


class _Log:
    def __init__(self, path: str, echo):
        self.path, self.echo = path, echo

    def row(self, **values) -> None:
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(values))
            if new:
                writer.writeheader()
            writer.writerow(values)
        self.echo(" ".join(f"{k}={v}" for k, v in values.items()))


def _step_generator(seed: int, step: int):
    """Each step's randomness comes from (seed, step) alone, so a resumed run draws what an
    uninterrupted one would, without restoring any global RNG."""
    import torch

    return torch.Generator().manual_seed(int(np.random.default_rng([seed, step, 1]).integers(2**62)))


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _train_vae(out: str, recipe: DiffusionRecipe, log: _Log, deadline: float):
    import torch
    from diffusers import AutoencoderKL

    from ...models.embedded import vae_config

    config = recipe.world()
    vae = AutoencoderKL(**vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    folder = os.path.join(out, "ckpt-vae")
    meta = load_checkpoint(folder, {"vae": vae}, optimizer) or {"step": 0}
    step = meta["step"]
    while step < recipe.vae_steps and time.time() < deadline:
        images, _ = render_batch(recipe.seed * 7919 + 1, step * recipe.vae_batch_size, recipe.vae_batch_size, config)
        x = _to_tensor(images)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe.vae_steps, recipe.vae_lr, recipe.warmup)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=_step_generator(recipe.seed, step))).sample
        l1 = (recon - x).abs().mean()
        loss = l1 + recipe.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            log.row(phase="vae", step=step, loss=round(loss.item(), 5), l1=round(l1.item(), 5))
        if step % recipe.checkpoint_every == 0 or step == recipe.vae_steps:
            save_checkpoint(folder, {"vae": vae}, optimizer, {"step": step})
    if step < recipe.vae_steps:  # stopped by the deadline: keep what was done
        save_checkpoint(folder, {"vae": vae}, optimizer, {"step": step})
    return vae.eval(), step >= recipe.vae_steps


def _latent_pool(out: str, vae, recipe: DiffusionRecipe, device: str = "cpu"):
    """Encode the training scenes once on ``device`` (kept on CPU, cached on disk); returns means,
    stds, prompts data, scale."""
    import torch
    from safetensors.torch import load_file, save_file

    path = os.path.join(out, "latents.safetensors")
    config = recipe.world()
    world = {"world": asdict(config), "count": recipe.latent_pool, "seed": recipe.seed,
             "vae": recipe.init_from or "trained"}
    if os.path.exists(path):
        with open(path + ".json") as f:
            meta = json.load(f)
        if meta.get("pool") == json.loads(json.dumps(world)):
            tensors = load_file(path)
            return tensors["mean"], tensors["std"], meta["scenes"], meta["scale"]
    means, stds, scenes = [], [], []
    vae.to(device)
    with torch.no_grad():
        for start in range(0, recipe.latent_pool, 256):
            images, info = render_batch(recipe.seed * 7919 + 2, start, min(256, recipe.latent_pool - start), config)
            dist = vae.encode(_to_tensor(images).to(device)).latent_dist
            means.append(dist.mean.cpu())
            stds.append(dist.std.cpu())
            scenes.extend(info)
    mean, std = torch.cat(means), torch.cat(stds)
    scale = float(1.0 / mean.std())
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, path)
    with open(path + ".json", "w") as f:
        json.dump({"scenes": scenes, "scale": scale, "pool": world}, f)
    return mean, std, scenes, scale


def _text_encoder(recipe: DiffusionRecipe, tokenizer):
    """The text encoder the UNet is conditioned on, and whether it trains with the UNet."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ...models.embedded import text_encoder_config
    from ...models.shipped import CLIP_DIR

    if recipe.text_encoder == "frozen-clip":  # CLIPTextModel reads the text tower of a CLIPModel folder
        import torch  # the CLIP is stored in fp16; the UNet trains in fp32

        return CLIPTextModel.from_pretrained(CLIP_DIR, dtype=torch.float32).requires_grad_(False).eval(), False
    if recipe.init_from:
        return CLIPTextModel.from_pretrained(os.path.join(recipe.init_from, "text_encoder")), True
    return CLIPTextModel(CLIPTextConfig(**text_encoder_config(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))), True


def _unet(recipe: DiffusionRecipe):
    from diffusers import UNet2DConditionModel

    from ...models.embedded import unet_config

    config = unet_config(tuple(recipe.unet_widths))
    if recipe.init_from:
        folder = os.path.join(recipe.init_from, "unet")
        if tuple(UNet2DConditionModel.load_config(folder)["block_out_channels"]) == tuple(recipe.unet_widths):
            return UNet2DConditionModel.from_pretrained(folder)
    return UNet2DConditionModel(**config)


def _train_unet(out: str, recipe: DiffusionRecipe, vae, tokenizer, log: _Log, deadline: float,
                until_step: int | None = None):
    import torch
    from diffusers import DDPMScheduler

    from ...models.embedded import scheduler_config

    # on a GPU when there is one; batches and noise are still drawn on the CPU from (seed, step),
    # so a run continued on another device sees the same data
    device = "cuda" if torch.cuda.is_available() else "cpu"
    began = time.time()
    mean, std, scenes, scale = _latent_pool(out, vae, recipe, device)
    deadline += time.time() - began  # encoding the pool once is setup, not training time
    vae.register_to_config(scaling_factor=scale)
    torch.manual_seed(recipe.seed)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    unet = _unet(recipe).to(device)
    text_encoder, train_text = _text_encoder(recipe, tokenizer)
    text_encoder.to(device)
    ema_unet = _Ema(unet, recipe.ema_decay)
    ema_text = _Ema(text_encoder, recipe.ema_decay) if train_text else None
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    optimizer = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2)
    modules = {"unet": unet, "ema_unet": ema_unet.module}
    if train_text:
        modules.update(text_encoder=text_encoder, ema_text_encoder=ema_text.module)
    folder = os.path.join(out, "ckpt-unet")
    meta = load_checkpoint(folder, modules, optimizer) or {"step": 0}
    step = start = meta["step"]
    noise_scheduler = DDPMScheduler(**scheduler_config())
    alphas = noise_scheduler.alphas_cumprod
    snr_all = alphas / (1 - alphas)
    last = min(recipe.unet_steps, recipe.unet_steps if until_step is None else until_step)
    while step < last and time.time() < deadline:
        rng = np.random.default_rng([recipe.seed, step])
        generator = _step_generator(recipe.seed, step)
        index = torch.from_numpy(rng.integers(len(scenes), size=recipe.batch_size))
        latents = (mean[index] + std[index] * torch.randn(std[index].shape, generator=generator)) * scale
        prompts = [prompt_variant(*scenes[i], rng, recipe.cfg_dropout) for i in index.tolist()]
        ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.from_numpy(rng.integers(0, noise_scheduler.config.num_train_timesteps, size=len(index)))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = noise_scheduler.get_velocity(latents, noise, t)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe.unet_steps, recipe.unet_lr, recipe.warmup)
        pred = unet(noisy.to(device), t.to(device), encoder_hidden_states=text_encoder(ids.to(device))[0]).sample
        snr = snr_all[t]
        weight = (torch.clamp(snr, max=recipe.min_snr_gamma) / (snr + 1)).to(device)  # min-SNR for v-prediction
        loss = (weight * ((pred - target.to(device)) ** 2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_unet.update(unet)
        if ema_text:
            ema_text.update(text_encoder)
        step += 1
        if step % 50 == 0:
            log.row(phase="unet", step=step, loss=round(loss.item(), 5), lr=round(optimizer.param_groups[0]["lr"], 6))
        if step % recipe.checkpoint_every == 0 or step == last:
            save_checkpoint(folder, modules, optimizer, {"step": step})
    if step < last:  # stopped by the deadline: keep what was done
        save_checkpoint(folder, modules, optimizer, {"step": step})
    return ema_unet.module.cpu(), (ema_text.module if ema_text else text_encoder).cpu(), step, step - start


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def export_pipeline(folder: str, vae, text_encoder, tokenizer, unet) -> None:
    """Save as a standard diffusers StableDiffusionPipeline folder: fp32 safetensors (about 17 MB),
    so a plain ``from_pretrained`` works on CPU and GPU alike."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from ...models.embedded import scheduler_config

    config = {k: v for k, v in scheduler_config().items() if k != "clip_sample"}
    scheduler = DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    drop_origin_paths(*(os.path.join(folder, part, "config.json") for part in ("vae", "unet")))


def train_diffusion(out: str, recipe: DiffusionRecipe = DiffusionRecipe(), *, max_minutes: float | None = None,
                    until_step: int | None = None, export_unfinished: bool = False, echo=None) -> dict:
    """Train (or continue training) into ``out``; returns a status dict. Exports when both phases are done.

    ``max_minutes`` and ``until_step`` stop early with a checkpoint; calling again continues.
    ``export_unfinished`` exports the EMA weights reached so far (the card says at which step).
    """
    import torch

    from ...errors import UserError
    from ...models.tokenizer import build_tokenizer

    if recipe.text_encoder not in TEXT_ENCODERS:
        raise UserError(f"text_encoder: expected one of {', '.join(TEXT_ENCODERS)}, got {recipe.text_encoder!r}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "recipe.json"), "w") as f:
        json.dump(asdict(recipe), f, indent=1)
    deadline = time.time() + (max_minutes * 60 if max_minutes else float("inf"))
    log = _Log(os.path.join(out, "train_log.csv"), echo or flushed_print)
    torch.manual_seed(recipe.seed)
    started = time.time()
    if recipe.init_from:
        from diffusers import AutoencoderKL

        vae, vae_done = AutoencoderKL.from_pretrained(os.path.join(recipe.init_from, "vae")).eval(), True
    else:
        vae, vae_done = _train_vae(out, recipe, log, deadline)
    status = {"vae_done": vae_done, "unet_step": 0, "exported": False}
    if not vae_done:
        return status
    tokenizer = build_tokenizer()
    for p in vae.parameters():
        p.requires_grad_(False)
    unet, text_encoder, step, trained = _train_unet(out, recipe, vae, tokenizer, log, deadline, until_step)
    status["unet_step"] = step
    if trained:
        _record_session(out, started, unet_step=step)
    if step >= recipe.unet_steps or (export_unfinished and step > 0):
        export_pipeline(os.path.join(out, "model"), vae, text_encoder, tokenizer, unet)
        write_model_card(out)
        status["exported"] = True
    return status


def write_model_card(out: str, fidelity: dict | None = None) -> None:
    """``model/README.md``: the recipe, steps, hardware and time of every session, fidelity if
    measured, and ``notes.md`` from the training folder if there is one."""
    model = os.path.join(out, "model")
    recipe = json.load(open(os.path.join(out, "recipe.json")))
    sessions = json.load(open(os.path.join(out, "sessions.json")))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(model) for f in fs)
    rows = "\n".join(f"| {i + 1} | {s['hardware']} | {s['minutes']} | {s['unet_step']} | {s.get('note', '')} |"
                     for i, s in enumerate(sessions))
    fidelity_text = ("\n".join(f"- {k}: {v}" for k, v in fidelity.items() if not isinstance(v, dict))
                     if fidelity else "not measured yet: run `dde bench fidelity`")
    notes_path = os.path.join(out, "notes.md")  # the trainer's own findings, kept across re-exports
    notes = "\n" + open(notes_path).read() if os.path.exists(notes_path) else ""
    reached = sessions[-1]["unet_step"] if sessions else 0
    state = ("" if reached >= recipe["unet_steps"] else
             f"\n**Unfinished:** exported at UNet step {reached} of {recipe['unet_steps']}. "
             f"`dde train diffusion --out DIR` continues from DIR's checkpoint (with optimizer state; not "
             f"committed, it is larger than these weights); on a fresh machine `--init-from` this folder "
             f"continues from these EMA weights.\n")
    frozen = recipe.get("text_encoder") == "frozen-clip"
    text_encoder = ("the small shapes CLIP's text tower (`engine/models/clip`), frozen, as SD freezes CLIP"
                    if frozen else "trained with the UNet")
    origin = (f"warm-started from `{recipe['init_from']}` (its VAE as it is)"
              if recipe.get("init_from") else "trained from scratch")
    text = f"""# embedded:shapes
{state}
A Stable-Diffusion-architecture model (AutoencoderKL, CLIPTextModel, CLIPTokenizer over the
shapes world's vocabulary, UNet2DConditionModel), {origin} by
`dde train diffusion` on rendered shapes-world scenes; text encoder: {text_encoder}.
64 px images, 16x16x4 latents, v-prediction, DPM-Solver++ by default. fp32 safetensors,
{size / 2**20:.1f} MB in all. Load it like any diffusers model:
`StableDiffusionPipeline.from_pretrained(folder)`.

## Training recipe
```json
{json.dumps(recipe, indent=1)}
```
VAE first (L1 + KL; skipped on a warm start), then the UNet (and a trained text encoder) on a
cached pool of encoded scenes, with EMA (the exported weights are the EMA), min-SNR weighting
and caption-dropout for classifier-free guidance. Prompts mix the world's captions with the
engine's prompt styles (class combinations, DiffusionEngine's generic prompt,
Dataset Diffusion's caption; classes).

## Sessions (hardware, minutes, UNet step reached)
| session | hardware | minutes | UNet step | note |
|---|---|---|---|---|
{rows}

## Fidelity
{fidelity_text}
{notes}"""
    with open(os.path.join(model, "README.md"), "w") as f:
        f.write(text)


def _record_session(out: str, started: float, **reached) -> None:
    """Append this session's minutes, hardware and ``reached`` (e.g. the step) to ``sessions.json``."""
    path = os.path.join(out, "sessions.json")
    sessions = json.load(open(path)) if os.path.exists(path) else []
    sessions.append({"minutes": round((time.time() - started) / 60, 1), "hardware": hardware(), **reached})
    with open(path, "w") as f:
        json.dump(sessions, f, indent=1)
