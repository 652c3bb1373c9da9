"""``dde train controlnet``: a segmentation ControlNet for the embedded model, on the shapes world.

``ControlNetModel.from_unet`` of the shipped embedded UNet (its encoder copied, zero
convolutions out), conditioning embedding (16, 32, 64): it downsamples by 4, the embedded
VAE's factor. Trained on rendered scenes of the model's world (or, by ``worlds``, in turn with
the default world's): the condition is the scene's
class-index map in the ``class_index`` palette (the ``controlnet`` backend's default), the
target the scene's image through the frozen VAE, the prompt one of the engine's prompt styles
(with caption dropout for classifier-free guidance). The UNet, VAE and text encoder stay frozen;
the loss is the model's own (v-prediction, min-SNR weighting). Checkpoints every
``checkpoint_every`` steps; ``max_minutes`` stops cleanly and a rerun continues.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import flushed_print
from .checkpoint import drop_origin_paths, load_checkpoint, save_checkpoint
from .data import prompt_variant, scene_classes
from .diffusion import _Log, _lr, _record_session, _step_generator, _to_tensor, hardware

__all__ = ["ControlNetRecipe", "train_controlnet", "write_card", "recipe_flags", "components", "CONDITIONING_CHANNELS"]

CONDITIONING_CHANNELS = (16, 32, 64)  # downsamples by 4: 64 px conditions, 16 px latents


@dataclass
class ControlNetRecipe:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 100
    checkpoint_every: int = 200
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    seed: int = 0
    init_from: str | None = None  # a trained ControlNet folder to start from instead of from_unet
    # the worlds a batch's scenes come from, in turn (``models.embedded.NAMED_WORLDS``)
    worlds: tuple[str, ...] = ("model",)

    def __post_init__(self):
        from ...models.embedded import NAMED_WORLDS

        self.worlds = tuple(self.worlds)  # recipe.json stores a list
        unknown = [w for w in self.worlds if w not in NAMED_WORLDS]
        if not self.worlds or unknown:
            raise ValueError(f"worlds: expected some of {list(NAMED_WORLDS)}, got {list(self.worlds)}")


def components(init_from: str | None = None):
    """The shipped embedded pipeline's frozen parts, and a ControlNet made from its UNet, or loaded
    from ``init_from`` (a ControlNet trained for an earlier embedded model: a warm start that the
    model's next version re-fits, since its UNet began from the same weights)."""
    from diffusers import ControlNetModel

    from ...models import load_pipeline

    pipe = load_pipeline("embedded:shapes", dtype="fp32")  # on the GPU when there is one
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    if init_from:
        controlnet = ControlNetModel.from_pretrained(init_from, use_safetensors=True)
    else:
        controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    return pipe, controlnet.to(pipe.device)


def _batch(recipe: ControlNetRecipe, step: int, pipe, colours: np.ndarray):
    """Step ``step``'s scenes: (latents, condition images in [0, 1], prompt token ids); from (seed, step) alone."""
    import torch

    from ...models.embedded import named_world
    from ...output.layout import derive_seed
    from ...world import render_scene

    rng = np.random.default_rng([recipe.seed, step, 7])
    worlds = [named_world(name) for name in recipe.worlds]
    scenes = [render_scene(derive_seed(recipe.seed * 7919 + 5, step * recipe.batch_size + k), None,
                           worlds[k % len(worlds)]) for k in range(recipe.batch_size)]
    device = pipe.device
    with torch.no_grad():
        latents = pipe.vae.encode(_to_tensor(np.stack([s.image for s in scenes])).to(device)).latent_dist.sample(
            _step_generator(recipe.seed, step)) * pipe.vae.config.scaling_factor
        prompts = [prompt_variant(s.caption, scene_classes(s), rng, recipe.cfg_dropout) for s in scenes]
        ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
        text = pipe.text_encoder(ids.to(device))[0]
    condition = torch.from_numpy(colours[np.stack([s.semantic for s in scenes])]).permute(0, 3, 1, 2).float() / 255
    return latents, condition.to(device), text


def _loss(pipe, controlnet, latents, condition, text, generator, rng, gamma: float):
    import torch

    scheduler = pipe.scheduler
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = torch.from_numpy(rng.integers(0, scheduler.config.num_train_timesteps, size=len(latents))).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=condition, return_dict=False)
    pred = pipe.unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid).sample
    alphas = scheduler.alphas_cumprod.to(latents.device)[t]
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=gamma) / (snr + 1)  # min-SNR for v-prediction, as the model was trained
    return (weight * ((pred - scheduler.get_velocity(latents, noise, t)) ** 2).mean(dim=(1, 2, 3))).mean()


def train_controlnet(out: str, recipe: ControlNetRecipe = ControlNetRecipe(), *, max_minutes: float | None = None,
                     until_step: int | None = None, echo=None) -> dict:
    """Train (or continue) into ``out``; exports ``out/controlnet`` (a diffusers ControlNetModel
    folder, fp32 safetensors) at the step reached. ``max_minutes`` and ``until_step`` stop early
    with a checkpoint; calling again continues. Returns {"step", "trained", "exported"}."""
    import torch
    from diffusers import DDPMScheduler

    from ...backends.conditions import palette_colours
    from ...models.embedded import scheduler_config

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "recipe.json"), "w") as f:
        json.dump(asdict(recipe), f, indent=1)
    started, deadline = time.time(), time.time() + (max_minutes * 60 if max_minutes else float("inf"))
    log = _Log(os.path.join(out, "train_log.csv"), echo or flushed_print)
    torch.manual_seed(recipe.seed)
    pipe, controlnet = components(recipe.init_from)  # a checkpoint in ``out`` overrides the start
    pipe.scheduler = DDPMScheduler(**scheduler_config())
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=recipe.lr, weight_decay=1e-2)
    folder = os.path.join(out, "ckpt")
    step = start = (load_checkpoint(folder, {"controlnet": controlnet}, optimizer) or {"step": 0})["step"]
    colours = palette_colours("class_index")
    controlnet.train()
    while step < min(recipe.steps, recipe.steps if until_step is None else until_step) and time.time() < deadline:
        latents, condition, text = _batch(recipe, step, pipe, colours)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe.steps, recipe.lr, recipe.warmup)
        loss = _loss(pipe, controlnet, latents, condition, text, _step_generator(recipe.seed + 1, step),
                     np.random.default_rng([recipe.seed, step, 8]), recipe.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 25 == 0:
            log.row(step=step, loss=round(loss.item(), 5), lr=round(optimizer.param_groups[0]["lr"], 6),
                    seconds=round(time.time() - started, 1))
        if step % recipe.checkpoint_every == 0:
            save_checkpoint(folder, {"controlnet": controlnet}, optimizer, {"step": step})
    save_checkpoint(folder, {"controlnet": controlnet}, optimizer, {"step": step})
    if step > start:
        _record_session(out, started, step=step)
    controlnet.eval().save_pretrained(os.path.join(out, "controlnet"), safe_serialization=True)
    drop_origin_paths(os.path.join(out, "controlnet", "config.json"))
    return {"step": step, "trained": step - start, "exported": True}


def recipe_flags(recipe: dict) -> str:
    """The `dde train controlnet` flags that reproduce ``recipe`` (a recipe.json) beyond the defaults."""
    worlds = recipe.get("worlds", list(ControlNetRecipe.worlds))
    return " ".join([f"--steps {recipe['steps']}",
                     *([f"--init-from {recipe['init_from']}"] if recipe.get("init_from") else []),
                     *([f"--worlds {','.join(worlds)}"] if list(worlds) != list(ControlNetRecipe.worlds) else [])])


def write_card(out: str, measured: dict) -> None:
    """``out/controlnet/README.md``: recipe, sessions (hardware, minutes, step), the GPU command and
    the measured agreement against an untrained ControlNet."""
    recipe = json.load(open(os.path.join(out, "recipe.json")))
    sessions = json.load(open(os.path.join(out, "sessions.json")))
    rows = "\n".join(f"| {i + 1} | {s['hardware']} | {s['minutes']} | {s['step']} |" for i, s in enumerate(sessions))
    lines = [f"| {name} | {m['images']} | {m['mIoU']} | {m['mean_image_mIoU']} | {m['seconds']} |"
             for name, m in measured["agreement"].items()]
    reached = sessions[-1]["step"] if sessions else 0
    state = ("" if reached >= recipe["steps"] else
             f"\n**Unfinished:** exported at step {reached} of {recipe['steps']}; `dde train controlnet --out DIR` "
             f"continues from DIR's checkpoint (kept out of the repository: with optimizer state it is larger "
             f"than these weights).\n")
    origin = (f"warm-started from the ControlNet in `{recipe['init_from']}` (trained for the previous embedded "
              f"model, which the shipped UNet continues)" if recipe.get("init_from") else
              "made by `ControlNetModel.from_unet` of the shipped UNet")
    text = f"""# embedded:shapes ControlNet
{state}
A segmentation ControlNet for `embedded:shapes` (diffusers `ControlNetModel`, {origin}, conditioning
embedding {list(CONDITIONING_CHANNELS)}: downsamples by 4 like the model's VAE). Condition: the class-index map in the `class_index`
palette (PASCAL VOC colour map, class k = 1 + shapes-world class index). Trained by
`dde train controlnet` on rendered scenes of the recipe's `worlds`, UNet/VAE/text encoder frozen,
v-prediction with min-SNR weighting, caption dropout {recipe['cfg_dropout']}.

## Recipe
```json
{json.dumps(recipe, indent=1)}
```

## Sessions
| session | hardware | minutes | step reached |
|---|---|---|---|
{rows}

On a GPU (one command, about {recipe['steps']} steps in under 10 minutes on one H100-class GPU, not measured here):
`dde train controlnet --out training/controlnet {recipe_flags(recipe)} --export`

## Condition-image agreement (measured)
`{measured['command']}`: {measured['note']}

| ControlNet | images | mIoU (pooled) | mean per-image mIoU | seconds |
|---|---|---|---|---|
{chr(10).join(lines)}
"""
    with open(os.path.join(out, "controlnet", "README.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "controlnet", "agreement.json"), "w") as f:
        json.dump({**measured, "hardware": hardware()}, f, indent=1)

