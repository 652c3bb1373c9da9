"""What the trained box heads add to generation, per image, on the embedded model.

The same img2img batches (rendered references, strength 0.2-0.5, 20 steps, CFG 7.5) are
generated, then labelled by each head; the labelling time (features + detector) is reported
against the generation time of the same images, measured in the same run.

    python bench/bench_box_head_cost.py [--rounds 3] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import REPO, save_result

sys.path.insert(0, REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.heads.adapter import AdapterHead
    from engine.heads.boxes.features import SIMULATED
    from engine.heads.grounding import GroundingHead
    from engine.lab.train.grounding import reference_requests
    from engine.spec import ClassSpec
    from engine.world import CLASSES

    torch.set_num_threads(args.threads)
    backend = DiffusionBackend(params=DiffusionParams(steps=args.steps, batch_size=args.batch, strength=(0.2, 0.5)),
                               classes=[])
    classes = [ClassSpec(name=c) for c in CLASSES]
    heads = {"adapter (simulated features)": AdapterHead(params=AdapterHead.Params(), classes=classes),
             "adapter (last_step features)": AdapterHead(params=AdapterHead.Params(features="last_step"),
                                                         classes=classes),
             "grounding (simulated features)": GroundingHead(params=GroundingHead.Params(), classes=classes)}
    for head in heads.values():
        head.attach(backend)
    requests, _ = reference_requests(list(CLASSES), args.batch * (args.rounds + 1), seed=5, offset=0)
    generate, label = 0.0, {name: 0.0 for name in heads}
    for r in range(args.rounds + 1):  # round 0 warms up every shape
        chunk = requests[r * args.batch:(r + 1) * args.batch]
        started = time.perf_counter()
        generated = backend.generate(chunk)
        took = time.perf_counter() - started
        generate += took if r else 0.0
        for name, head in heads.items():
            for gen in generated:  # each head pays for its own features, as it would alone in a job
                gen.extras.pop(SIMULATED, None)
            started = time.perf_counter()
            head.label(chunk, generated)
            label[name] += (time.perf_counter() - started) if r else 0.0
    images = args.rounds * args.batch
    result = {"command": "python bench/bench_box_head_cost.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "images": images, "generation_s_per_image": round(generate / images, 4),
              "heads": {name: {"label_s_per_image": round(t / images, 4), "share_of_generation": round(t / generate, 4)}
                        for name, t in label.items()}}
    save_result(f"{REPO}/bench/results/box_head_cost.json", result)


if __name__ == "__main__":
    main()
