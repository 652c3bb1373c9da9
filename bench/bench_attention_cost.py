"""What attention capture costs.

1. Embedded model: sampling time of the same batches with the ``attention`` head's capture
   installed against a backend without it, interleaved in one run (timings here are noisy,
   so only the ratio is reported).
2. SD 2.1-base architecture at 512 px: the UNet built from its public config with random
   weights (attention cost does not depend on weights); one denoising step at batch 1 with
   CFG, in a fresh process each, with and without capture at the default resolutions (cross
   16, self 32): the capture buffers' bytes and the process's peak memory.

    python bench/bench_attention_cost.py [--rounds 3] [--skip-sd]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from _common import REPO, save_result

sys.path.insert(0, REPO)

# stabilityai/stable-diffusion-2-1-base, unet/config.json (the fields that shape compute)
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True)


def embedded_ratio(rounds: int, batch: int, steps: int) -> dict:
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.heads.attention.head import AttentionHead, AttentionParams
    from engine.records import ImageRequest
    from engine.spec import ClassSpec
    from engine.world import CLASSES

    params = DiffusionParams(steps=steps, batch_size=batch)
    plain = DiffusionBackend(params=params, classes=[])
    captured = DiffusionBackend(params=params, classes=[])
    head = AttentionHead(params=AttentionParams(), classes=[ClassSpec(name=c) for c in CLASSES])
    head.attach(captured)
    requests = [ImageRequest(k, 1000 + k, f"a photograph of a {CLASSES[k % 6]} and a {CLASSES[(k + 1) % 6]}",
                             classes=[CLASSES[k % 6], CLASSES[(k + 1) % 6]]) for k in range(batch)]
    for backend in (plain, captured):  # warm-up: first calls at a new shape are slow
        backend.generate(requests)
    seconds = {"plain": 0.0, "capture": 0.0, "labelling": 0.0}
    for _ in range(rounds):
        for name, backend in (("plain", plain), ("capture", captured)):
            t0 = time.perf_counter()
            generated = backend.generate(requests)
            seconds[name] += time.perf_counter() - t0
            if name == "capture":
                t0 = time.perf_counter()
                head.label(requests, generated)
                seconds["labelling"] += time.perf_counter() - t0
    images = rounds * batch
    return {"images": images, "steps": steps, "batch": batch,
            "seconds_per_image_plain": round(seconds["plain"] / images, 4),
            "seconds_per_image_capture": round(seconds["capture"] / images, 4),
            "seconds_per_image_labelling": round(seconds["labelling"] / images, 4),
            "capture_over_plain": round(seconds["capture"] / seconds["plain"], 3),
            "capture_and_label_over_plain": round((seconds["capture"] + seconds["labelling"])
                                                  / seconds["plain"], 3)}


def sd_step(capture: bool) -> dict:
    """One SD 2.1-base UNet step at 512 px, batch 1 with CFG (2 UNet rows), on this machine's CPU."""
    import torch
    from diffusers import UNet2DConditionModel

    from engine.heads.attention import AttentionStore, CaptureConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_BASE_UNET).eval()
    store = None
    if capture:
        store = AttentionStore(CaptureConfig(cross_resolutions=(16,), self_resolution=32))
        store.install(unet)
    latents = torch.randn(2, 4, 64, 64)
    text = torch.randn(2, 77, 1024)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    buffer_bytes = 0
    with torch.no_grad():
        if store is not None:
            weights = torch.zeros(1, 77, 3)
            weights[0, 1:4, [0, 1, 2]] = 1.0
            bias = torch.zeros(1, 1, 77)
            bias[0, 0, 4:] = float("-inf")
            store.begin(torch.randn(1, 77, 1024), weights, bias, [0], 1)
            buffer_bytes = sum(t.numel() * t.element_size() for t in store.buffers())
        t0 = time.perf_counter()
        unet(latents, torch.tensor([500]), encoder_hidden_states=text)
        seconds = time.perf_counter() - t0
        if store is not None:
            store.end()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"capture": capture, "step_seconds": round(seconds, 2), "buffer_bytes": buffer_bytes,
            "rss_before_step_mib": round(baseline / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
            "step_peak_over_before_mib": round((peak - baseline) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--skip-sd", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--sd-step", choices=["plain", "capture"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.sd_step:
        print(json.dumps(sd_step(args.sd_step == "capture")))
        return
    result = {"command": "python bench/bench_attention_cost.py " + " ".join(sys.argv[1:]),
              "cpu_cores": os.cpu_count(), "embedded": embedded_ratio(args.rounds, args.batch, args.steps)}
    if not args.skip_sd:
        threads = ["--threads", str(args.threads)] if args.threads else []
        runs = {mode: json.loads(subprocess.run([sys.executable, __file__, "--sd-step", mode, *threads], check=True,
                                                capture_output=True, text=True).stdout.strip().splitlines()[-1])
                for mode in ("plain", "capture")}
        result["sd21_base_512"] = {
            **runs, "capture_buffers_mib_per_image": round(runs["capture"]["buffer_bytes"] / 2**20, 1),
            "extra_peak_mib_per_image": round(runs["capture"]["peak_rss_mib"] - runs["plain"]["peak_rss_mib"], 1)}
    save_result(os.path.join(REPO, "bench", "results", "attention_cost.json"), result)


if __name__ == "__main__":
    main()
