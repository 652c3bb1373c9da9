"""``dde train clip``: a small CLIP for the shapes world, trained contrastively from scratch.

The text tower has the embedded model's ``CLIPTextModel`` config and the world tokenizer
(32 tokens); the image tower is a small ViT over 64 px scenes. Pairs are rendered scenes
and a prompt in one of the styles the engine generates with. Checkpoints every few hundred
steps; ``max_minutes`` stops cleanly and a rerun continues, drawing exactly what an
uninterrupted run would (each step's data comes from (seed, step)).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from . import flushed_print
from .checkpoint import load_checkpoint, save_checkpoint
from .data import prompt_variant, render_batch
from .diffusion import _Log, _lr, _record_session, _step_generator, hardware

__all__ = ["ClipRecipe", "build_clip", "clip_prompt", "train_clip", "export_clip"]


@dataclass
class ClipRecipe:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    checkpoint_every: int = 100
    class_names_share: float = 0.1  # prompts that are the class names alone, "star circle"
    # A multi-label "which classes are present" loss on the image embedding (a linear head, not exported).
    # Without it both towers settle on colours and backgrounds: shape-only prompts collapse to one
    # text embedding, which leaves the image tower no gradient towards shapes (measured: zero-shot
    # and a linear probe at chance after 600 steps of batch 128).
    class_loss_weight: float = 1.0
    # The same linear head on the text embedding, predicting the classes the prompt names, so that
    # "a photograph of a star" and a star's image point the same way from the first steps.
    text_class_loss_weight: float = 1.0
    # Knowledge distillation from the frozen shipped oracle CNN (``engine/models/oracle``) on the same
    # augmented pixels: its sigmoid outputs as soft multi-hot targets of the class head
    # (``distill_weight``), and its pooled 128-d features regressed from the unit image embedding
    # through a linear head (``feature_weight``). Dense targets, where the multi-hot labels alone left
    # the ViT at the label prior for 1206 steps (training/clip/notes.md has the A/B table).
    distill_weight: float = 1.0
    feature_weight: float = 0.0
    # ... and its 4x4 feature map before pooling, regressed from the image tower's patch tokens
    # (average-pooled to 4x4, through a linear head): a target for every token.
    dense_weight: float = 1.0
    single_object_share: float = 0.5  # scenes of one object, as the zero-shot eval draws
    # The image tower: 64 px in 8 px patches (an 8x8 grid; objects span 11-35 px, 2-5 patches).
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    # Objects of the model's training world (19-35 px) and of the default world (11-27 px),
    # so the image tower scores the embedded model's images and the demo's references alike.
    max_objects: int = 3
    min_scale: float = 0.18
    max_scale: float = 0.55
    eval_images: int = 100  # single-object val scenes per class for the card's zero-shot accuracy
    # Train the image tower (and the temperature) alone: the text tower is the embedded UNet's frozen
    # text encoder, so a continuation with it frozen sharpens zero-shot scores without moving the
    # conditioning the UNet was trained on (its exported text weights stay bit-identical).
    freeze_text: bool = False
    seed: int = 0

    def world(self):
        from ...world import WorldConfig

        return WorldConfig(size=64, max_objects=self.max_objects, min_scale=self.min_scale, max_scale=self.max_scale)


def build_clip(recipe: ClipRecipe, tokenizer):
    """A randomly initialised ``CLIPModel``: the embedded text encoder's config and a ViT sized by ``recipe``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from ...models.embedded import IMAGE_SIZE, TEXT_WIDTH, text_encoder_config

    text = text_encoder_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    vision = dict(image_size=IMAGE_SIZE, patch_size=recipe.patch_size, hidden_size=recipe.vision_width,
                  intermediate_size=4 * recipe.vision_width, num_hidden_layers=recipe.vision_layers,
                  num_attention_heads=4, projection_dim=TEXT_WIDTH)
    torch.manual_seed(recipe.seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=TEXT_WIDTH))


def clip_prompt(caption: str, classes: list[str], rng: np.random.Generator, class_names_share: float) -> str:
    """The diffusion trainer's prompt styles (no caption dropout), plus the class names alone."""
    if rng.random() < class_names_share:
        return " ".join(rng.permutation(classes))
    return prompt_variant(caption, classes, rng, 0.0)


def _batch(recipe: ClipRecipe, step: int, tokenizer):
    """Step ``step``'s pixel values (B, 3, 64, 64) float32 in [-1, 1], augmented, token ids (B, 32)
    int64 and multi-hot classes present (B, 6) float32."""
    import torch

    from ...world import CLASSES
    from .oracle import _augment, to_input

    single = int(round(recipe.single_object_share * recipe.batch_size))
    one = replace(recipe.world(), min_objects=1, max_objects=1)
    parts = [render_batch(recipe.seed * 7919 + stream, step * recipe.batch_size, count, world)
             for stream, count, world in ((3, recipe.batch_size - single, recipe.world()), (5, single, one)) if count]
    images, info = np.concatenate([p[0] for p in parts]), [i for p in parts for i in p[1]]
    rng = np.random.default_rng([recipe.seed, step])
    prompts, seen = [], set()
    for caption, classes in info:
        prompt = clip_prompt(caption, classes, rng, recipe.class_names_share)
        # CLIP's loss takes every other pair in the batch as a negative, so a repeated text
        # ("a photograph of a star") would be pushed away from its own image: use the caption.
        prompts.append(caption if prompt in seen else prompt)
        seen.add(prompts[-1])
    ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    present = torch.tensor([[float(c in classes) for c in CLASSES] for _, classes in info])
    # Blur and noise as in the oracle's training, so scores hold on generated (softer) images.
    return _augment(to_input(images), _step_generator(recipe.seed, step)), ids, present


def _fit(out: str, recipe: ClipRecipe, model, tokenizer, log: _Log, deadline: float, until_step: int | None,
         init_from: str | None = None):
    """Train from the checkpoint in ``out`` (if any; else from ``init_from``'s exported weights, if
    given) up to the recipe's steps, ``until_step`` or the deadline."""
    import torch

    from ...world import CLASSES

    width = model.config.projection_dim
    head = torch.nn.Linear(width, len(CLASSES))
    modules = {"clip": model, "class_head": head}
    teacher = None
    if recipe.distill_weight or recipe.feature_weight or recipe.dense_weight:
        from .oracle import load_oracle

        teacher = load_oracle().eval().requires_grad_(False)
        if recipe.feature_weight:
            modules["feature_head"] = torch.nn.Linear(width, teacher[1].in_features)
        if recipe.dense_weight:
            modules["dense_head"] = torch.nn.Linear(model.config.vision_config.hidden_size, teacher[1].in_features)
    if recipe.freeze_text:
        model.text_model.requires_grad_(False)
        model.text_projection.requires_grad_(False)
    named = [(n, p) for name, m in modules.items() for n, p in m.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=recipe.lr)
    folder = os.path.join(out, "ckpt")
    step = start = (load_checkpoint(folder, modules, optimizer) or {"step": 0})["step"]
    if step == 0 and init_from:  # a warm start: exported weights, fresh heads, AdamW and schedule
        from transformers import CLIPModel

        model.load_state_dict(CLIPModel.from_pretrained(init_from, use_safetensors=True, dtype=torch.float32).state_dict())
    last = min(recipe.steps, recipe.steps if until_step is None else until_step)
    model.train()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    while step < last and time.time() < deadline:
        pixels, ids, present = _batch(recipe, step, tokenizer)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe.steps, recipe.lr, recipe.warmup)
        output = model(input_ids=ids, pixel_values=pixels, return_loss=True)
        # On the exported (unit) embeddings themselves, rescaled to unit-size entries so the head trains fast.
        image, text = output.image_embeds * width ** 0.5, output.text_embeds * width ** 0.5
        logits = head(image)
        class_loss = bce(logits, present)
        loss = output.loss + recipe.class_loss_weight * class_loss
        if recipe.text_class_loss_weight:
            loss = loss + recipe.text_class_loss_weight * bce(head(text), present)
        if teacher is not None:
            loss = loss + _distillation(recipe, teacher, modules, pixels, output, logits, image)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        with torch.no_grad():  # CLIP's cap on the temperature: logits scale at most 100
            model.logit_scale.clamp_(0, np.log(100))
        step += 1
        if step % 50 == 0:
            log.row(step=step, clip_loss=round(output.loss.item(), 5), class_loss=round(class_loss.item(), 5), lr=round(optimizer.param_groups[0]["lr"], 6),
                    logit_scale=round(model.logit_scale.exp().item(), 2))
        if step % recipe.checkpoint_every == 0 or step == last:
            save_checkpoint(folder, modules, optimizer, {"step": step})
    if step < last:  # stopped by the deadline: keep what was done
        save_checkpoint(folder, modules, optimizer, {"step": step})
    return step, step - start


def _distillation(recipe: ClipRecipe, teacher, modules: dict, pixels, output, logits, image):
    """Knowledge distillation from the frozen oracle CNN (Hinton et al. 2015, with sigmoid outputs
    for multi-label classes; feature regression as in FitNets, Romero et al. 2015), weighted by the
    recipe: BCE of the class ``logits`` (B, 6) against the oracle's probabilities, and MSE of its
    pooled (B, 128) and 4x4 (B, 16, 128) features predicted from ``image`` (B, 128; the unit image
    embedding times sqrt(128)) and from the patch tokens. Returns a scalar tensor."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        spatial = teacher[0][:-2](pixels)  # (B, 128, 4, 4): the oracle's features before pooling
        features = spatial.mean((2, 3))
        soft = torch.sigmoid(teacher[1](features))
    loss = recipe.distill_weight * F.binary_cross_entropy_with_logits(logits, soft)
    if recipe.feature_weight:
        loss = loss + recipe.feature_weight * F.mse_loss(modules["feature_head"](image), features)
    if recipe.dense_weight:
        tokens = output.vision_model_output.last_hidden_state[:, 1:]  # (B, side², width), CLS dropped
        side = int(round(tokens.shape[1] ** 0.5))
        grid = tokens.transpose(1, 2).reshape(len(tokens), -1, side, side)
        pooled = F.adaptive_avg_pool2d(grid, spatial.shape[-1]).flatten(2).transpose(1, 2)
        loss = loss + recipe.dense_weight * F.mse_loss(modules["dense_head"](pooled), spatial.flatten(2).transpose(1, 2))
    return loss


def export_clip(folder: str, model, tokenizer) -> None:
    """A standard transformers folder: ``CLIPModel`` and a ``CLIPProcessor`` (the world tokenizer;
    images to 64 px, scaled to [-1, 1] as in training). The weights are stored as fp16 safetensors
    (half the size; the model card's accuracy is measured on them) under a config whose ``dtype``
    is float32, so ``from_pretrained`` loads fp32 by default."""
    import copy

    import torch
    from transformers import CLIPImageProcessor, CLIPProcessor

    from ...models.embedded import IMAGE_SIZE

    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    copy.deepcopy(model).to(torch.float16).save_pretrained(folder, safe_serialization=True)
    config = os.path.join(folder, "config.json")
    with open(config) as f:
        settings = json.load(f)
    with open(config, "w") as f:
        json.dump({**settings, "dtype": "float32"}, f, indent=2)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def train_clip(out: str, recipe: ClipRecipe = ClipRecipe(), *, max_minutes: float | None = None,
               until_step: int | None = None, export_unfinished: bool = False, init_from: str | None = None,
               echo=None) -> dict:
    """Train (or continue training) into ``out``; returns {"step", "exported"}. When the recipe's
    steps are done (or ``export_unfinished``), exports to ``out``/model, measures zero-shot
    accuracy and writes the card. ``max_minutes`` and ``until_step`` stop early with a checkpoint.
    ``init_from`` (an exported CLIP folder, e.g. ``engine/models/clip``) warm-starts a run that has no
    checkpoint yet from those weights: how training continues on a machine without ``out``/ckpt."""
    from ...models.tokenizer import build_tokenizer

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "recipe.json"), "w") as f:
        json.dump(asdict(recipe), f, indent=1)
    deadline = time.time() + (max_minutes * 60 if max_minutes is not None else float("inf"))  # 0: export only
    started = time.time()
    tokenizer = build_tokenizer()
    model = build_clip(recipe, tokenizer)
    step, trained = _fit(out, recipe, model, tokenizer, _Log(os.path.join(out, "train_log.csv"),
                                                              echo or flushed_print), deadline, until_step, init_from)
    if trained:
        _record_session(out, started, step=step, **({"note": f"warm start from {init_from}"}
                                                   if init_from and trained == step else {}))
    status = {"step": step, "exported": False}
    if step >= recipe.steps or (export_unfinished and step > 0):
        export_clip(os.path.join(out, "model"), model.eval(), build_tokenizer())  # not the one padded in training
        write_clip_card(out)
        status["exported"] = True
    return status


def write_clip_card(out: str) -> dict:
    """``model/README.md``: recipe, sessions, size, and zero-shot accuracy measured now on rendered
    single-object val scenes of the embedded model's world and of the default world. Returns the accuracies."""
    from ...models.embedded import model_world
    from ...world import WorldConfig
    from ..metrics.clip import zero_shot_accuracy

    model = os.path.join(out, "model")
    recipe = json.load(open(os.path.join(out, "recipe.json")))
    sessions = json.load(open(os.path.join(out, "sessions.json")))
    images_per_class = recipe["eval_images"]
    size = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model) if f.endswith(".safetensors"))
    worlds = {"embedded model's world (19-35 px)": model_world(), "default world (11-27 px)": WorldConfig()}
    accuracy = {name: zero_shot_accuracy(model, images_per_class, world) for name, world in worlds.items()}
    classes = list(next(iter(accuracy.values()))["per_class"])
    table = "\n".join(f"| {name} | {a['mean']} | " + " | ".join(str(a["per_class"][c]) for c in classes) + " |"
                      for name, a in accuracy.items())
    rows = "\n".join(f"| {i + 1} | {s['hardware']} | {s['minutes']} | {s['step']} | {s.get('note', '')} |"
                     for i, s in enumerate(sessions))
    reached = sessions[-1]["step"] if sessions else 0
    stages = "".join(f"\nContinued by `{name}` (its sessions below):\n```json\n{open(os.path.join(out, name)).read().strip()}\n```"
                     for name in sorted(n for n in os.listdir(out) if n.startswith("recipe-stage")))
    notes_path = os.path.join(out, "notes.md")  # the trainer's own findings, kept across re-exports
    notes = "\n" + open(notes_path).read() if os.path.exists(notes_path) else ""
    state = ("" if reached >= recipe["steps"] else
             f"\n**Unfinished:** exported at step {reached} of {recipe['steps']}.\n")
    text = f"""# shapes CLIP
{state}
A small CLIP (transformers `CLIPModel`) for the shapes world, trained from scratch by
`dde train clip` with CLIP's contrastive loss on rendered 64 px scenes paired with the
prompt styles the engine generates with: world captions, "a photograph of a circle and a
square", DiffusionEngine's generic prompt, Dataset Diffusion's "caption; classes", and the
class names alone. Text tower: the embedded model's `CLIPTextModel` config over the world
tokenizer (32 tokens); image tower: a ViT, {recipe['patch_size']} px patches, width
{recipe['vision_width']}, {recipe['vision_layers']} layers. fp16 safetensors ({size / 2**20:.1f} MB) that load as fp32.

Load it offline like any CLIP: `CLIPModel.from_pretrained(folder)`,
`CLIPProcessor.from_pretrained(folder)`; `engine.lab.metrics.clip` has the image-text score and
image-image similarity.

## Zero-shot class accuracy
Rendered single-object val scenes ({images_per_class} per class, seeds training never
draws), prompt "a photograph of a <class>" against the 6 classes, measured by
`engine.lab.metrics.clip.zero_shot_accuracy` when this card was written
(`dde train clip --out DIR` writes it on export).

| world | mean | {' | '.join(classes)} |
|---|---|{'---|' * len(classes)}
{table}

## Training recipe
```json
{json.dumps(recipe, indent=1)}
```{stages}
Plus, each weighted as the recipe says: a multi-label "which classes are present" loss on the
image embedding through a linear head (`class_loss_weight`); the same head on the text embedding,
predicting the classes the prompt names (`text_class_loss_weight`); and knowledge distillation
from the frozen shipped oracle CNN (`engine/models/oracle`) on the same augmented images: its
probabilities as soft targets of the class head (`distill_weight`) and its 4x4 feature map
regressed from the ViT's patch tokens, pooled to 4x4, through a linear head (`dense_weight`).
The heads are kept in the checkpoint and not exported. `single_object_share` of each batch are
single-object scenes.
AdamW (weight decay on matrices only), linear warm-up then cosine to a tenth of the peak,
gradient clipping at 1, logit scale capped at 100. Images get the oracle's blur, colour and
noise augmentation. A prompt repeated within a batch is replaced by its scene's caption
(CLIP's loss would push a repeated text away from its own image).

## Continuing
The training state (weights and AdamW moments, safetensors + JSON) is `DIR/ckpt`;
`dde train clip --out DIR` continues it from there, drawing what an uninterrupted run would,
and `--steps N` above the recipe's trains further (the cosine schedule stretches to N).
`--max-minutes` stops cleanly at any point; `--export` installs the result at `engine/models/clip`.
The checkpoint (about 14 MB with AdamW's moments) is not in the repository; on a machine without
it, `dde train clip --out DIR --init-from engine/models/clip --steps N` warm-starts from these
weights (fresh class heads, AdamW and schedule: a continuation, not a replay of the same run);
add `--freeze-text` to train the image tower alone, which keeps the text tower (the embedded UNet's
text encoder) bit-identical, so the UNet's conditioning does not move.

## Sessions (hardware, minutes, step reached)
| session | hardware | minutes | step | note |
|---|---|---|---|---|
{rows}
{notes}"""
    with open(os.path.join(model, "README.md"), "w") as f:
        f.write(text)
    return accuracy
