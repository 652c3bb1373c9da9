"""Which image tower learns the shapes world's classes fastest? The multi-label class loss alone
(BCE, batch 64, the CLIP trainer's batches) for each arm; prints the loss every 25 steps.

    python bench/clip_image_tower.py --steps 200
"""

import argparse
import time


def arms():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from engine.lab.train.oracle import build_classifier

    def vit(patch):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(
            image_size=64, patch_size=patch, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=4, projection_dim=128))

    return {"oracle CNN features, lr 2e-3": (lambda: build_classifier()[0], 2e-3), "ViT p8, lr 1e-3": (lambda: vit(8), 1e-3),
            "ViT p8, lr 3e-4": (lambda: vit(8), 3e-4), "ViT p4, lr 3e-4": (lambda: vit(4), 3e-4)}


def run(name, build, lr, steps):
    import torch

    from engine.lab.train.clip import ClipRecipe, _batch
    from engine.models.tokenizer import build_tokenizer

    torch.manual_seed(0)
    model, tokenizer, recipe = build(), build_tokenizer(), ClipRecipe(seed=1)
    head = torch.nn.Linear(128, 6)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
    started = time.time()
    for step in range(steps):
        pixels, _, present = _batch(recipe, step, tokenizer)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        out = model(pixels)
        features = out if isinstance(out, torch.Tensor) else out.image_embeds
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            head(torch.nn.functional.normalize(features, dim=-1) * 128 ** 0.5), present)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 25 == 0:
            print(f"{name} step {step + 1} loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    for name, (build, lr) in arms().items():
        run(name, build, lr, parser.parse_args().steps)
