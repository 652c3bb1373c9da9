"""What a ControlNet adds to each denoising step, counted rather than timed.

``dde bench labels --source controlnet`` times ControlNet sampling against plain sampling in one
run (1.18x, 1.40x, 1.60x, 1.69x in four runs beside other work). This counts the floating-point
operations of one CFG step (batch 2: the conditional and the unconditional half) of the UNet and
of the ControlNet with ``torch.utils.flop_counter``, so the ratio the timings should approach is
known without timing noise.

    python bench/bench_controlnet_flops.py [--model engine/models/shapes] [--controlnet engine/models/controlnet]
"""

from __future__ import annotations

import argparse
import os
import sys

from _common import REPO, save_result

sys.path.insert(0, REPO)


def count(model: str, controlnet: str) -> dict:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").eval()
    net = ControlNetModel.from_pretrained(controlnet).eval()
    tokens = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer").model_max_length
    side = unet.config.sample_size
    factor = 2 ** (len(AutoencoderKL.load_config(model, subfolder="vae")["block_out_channels"]) - 1)
    latents = torch.randn(2, unet.config.in_channels, side, side)
    timestep, text = torch.tensor([500, 500]), torch.randn(2, tokens, unet.config.cross_attention_dim)
    condition = torch.randn(2, 3, side * factor, side * factor)  # image-sized, as the VAE decodes
    flops = {}
    with torch.no_grad():
        for name, run in (("unet", lambda: unet(latents, timestep, encoder_hidden_states=text)),
                          ("controlnet", lambda: net(latents, timestep, encoder_hidden_states=text,
                                                     controlnet_cond=condition, return_dict=False))):
            with FlopCounterMode(display=False) as counter:
                run()
            flops[name] = counter.get_total_flops()
    return {"model": os.path.relpath(model, REPO), "controlnet": os.path.relpath(controlnet, REPO), "latent": [side, side], "text_tokens": tokens,
            "gflop_per_cfg_step": {k: round(v / 1e9, 4) for k, v in flops.items()},
            "parameters": {"unet": sum(p.numel() for p in unet.parameters()),
                           "controlnet": sum(p.numel() for p in net.parameters())},
            "controlnet_step_over_plain_step": round((flops["unet"] + flops["controlnet"]) / flops["unet"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, "engine/models/shapes"))
    parser.add_argument("--controlnet", default=os.path.join(REPO, "engine/models/controlnet"))
    parser.add_argument("--out", default=os.path.join(REPO, "bench/results/controlnet_flops.json"))
    args = parser.parse_args()
    save_result(args.out, count(args.model, args.controlnet))


if __name__ == "__main__":
    main()
