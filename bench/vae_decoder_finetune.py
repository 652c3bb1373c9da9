"""Can a better VAE decoder lower the fidelity bench's Fréchet floor? Fine-tunes the decoder of a
model's VAE alone (the encoder, and so the latent space its UNet was trained in, frozen, as Stable
Diffusion's ft-MSE decoder was made) with the VAE phase's L1 on rendered scenes of the model's
world, then reports held-out L1/MSE of both VAEs and `frechet_floor.floors` behind the new one:

    OMP_NUM_THREADS=1 python bench/vae_decoder_finetune.py engine/models/shapes OUT 3000 2e-4
"""

import json
import os
import sys
import time


def finetune(model: str, out: str, steps: int, lr: float, batch: int = 32) -> None:
    import torch
    from diffusers import AutoencoderKL

    from engine.lab.train.data import render_batch
    from engine.lab.train.diffusion import _lr, _step_generator, _to_tensor
    from engine.models.embedded import model_world

    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae")).requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    started = time.time()
    for step in range(steps):
        x = _to_tensor(render_batch(12345, step * batch, batch, model_world())[0])
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr, 100)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=_step_generator(1, step))
        loss = (vae.decode(latents).sample - x).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if step % 100 == 0:
            print(step, round(loss.item(), 5), round(time.time() - started), flush=True)
    vae.save_pretrained(os.path.join(out, "vae"))


def reconstruction_error(vae_folder: str, count: int = 400) -> dict:
    from frechet_floor import decode_encoded

    from engine.lab.train.oracle import rendered_set

    x, r = decode_encoded(vae_folder, rendered_set(777_777, count)[0])
    return {"l1": round((r - x).abs().mean().item(), 5), "mse": round(((r - x) ** 2).mean().item(), 5)}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))  # frechet_floor, beside this script
    from frechet_floor import floors

    model, out, steps, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    finetune(model, out, steps, lr)
    print(json.dumps({"before": {**reconstruction_error(os.path.join(model, "vae")), **floors(model, 0)},
                      "after": {**reconstruction_error(os.path.join(out, "vae")), **floors(out, 0)}}, indent=1))
