"""What `dde bench fidelity`'s Fréchet distances would be for a perfect generator, and for a perfect
UNet behind a given VAE (its reconstruction of the perfect scenes), on the bench's own prompt sets:

    python bench/frechet_floor.py engine/models/shapes 0

Prints JSON: for each reference (the random 1-3-object scenes the bench reports as
``frechet_oracle_generated_vs_rendered``, and scenes holding exactly the prompted classes, its
``..._vs_prompted_rendered``) the distance of the perfect scenes and of their VAE reconstruction.
"""

import json
import os
import sys

import numpy as np


def decode_encoded(vae_folder: str, images: np.ndarray, batch: int = 50):
    """(input, reconstruction): (N, 3, H, W) float tensors in [-1, 1] (the reconstruction unclamped)
    of uint8 (N, H, W, 3) ``images`` through the VAE at ``vae_folder`` (latent means)."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_folder).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        out = torch.cat([vae.decode(vae.encode(x[i:i + batch]).latent_dist.mode()).sample
                         for i in range(0, len(x), batch)])
    return x, out


def reconstruct(vae_folder: str, images: np.ndarray) -> np.ndarray:
    out = decode_encoded(vae_folder, images)[1]
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def floors(model: str, seed: int, per_class: int = 50) -> dict:
    from engine.lab.evals.fidelity import frechet_distance, oracle_outputs, prompt_sets, prompted_scenes
    from engine.lab.train.oracle import load_oracle, rendered_set

    oracle = load_oracle()
    sets = prompt_sets(per_class, seed).values()
    count = sum(len(prompts) for prompts in sets)
    perfect = np.concatenate([prompted_scenes(prompts, seed, draw=2) for prompts in sets])  # not the bench's draws

    def features(images):
        return oracle_outputs(oracle, images)[1]

    references = {"rendered": features(rendered_set(424_242, count)[0]),  # the bench's two references
                  "prompted_rendered": features(np.concatenate([prompted_scenes(p, seed) for p in sets]))}
    candidates = {"perfect_generator": features(perfect),
                  "perfect_unet_behind_vae": features(reconstruct(os.path.join(model, "vae"), perfect))}
    return {f"{name}_vs_{ref}": round(frechet_distance(f, r), 3)
            for name, f in candidates.items() for ref, r in references.items()}


if __name__ == "__main__":
    model, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    print(json.dumps({"model": model, "seed": seed, **floors(model, seed)}, indent=1))
