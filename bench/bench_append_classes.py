"""Issue 18: Dataset Diffusion's class-prompt appending ('caption; cls-a cls-b') for captions a user
gives (JSONL prompts, ``prompts.append_classes``), against the caption alone.

The captions are the embedded model's own world captions (what a JSONL file of scene
descriptions holds); txt2img, 25 steps, CFG 7.5, the same seeds in both arms. The attention
head's masks come from the class-only capture prompt either way, so appending changes only the
image. Truth is the segmentation oracle on each generated image, as in `dde bench labels`.
Reported per arm: mIoU of the attention masks (tau 0 and tau 4 with the uncertainty band) and the
share of the named classes the oracle finds in the image (prompt fidelity).

    python bench/bench_append_classes.py --images 48
"""

from __future__ import annotations

import argparse
import math
import sys

from _common import REPO, save_result

sys.path.insert(0, REPO)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.heads.attention.head import AttentionHead
    from engine.job.prompts import class_append_prompt
    from engine.lab.evals.labels import generate_kept, score_heads, truth_instances
    from engine.lab.train.segmenter import load_segmenter, segment
    from engine.models.embedded import model_world
    from engine.output.layout import derive_seed
    from engine.records import ImageRequest
    from engine.spec import ClassSpec
    from engine.world import CLASSES, render_scene

    backend = DiffusionBackend(params=DiffusionParams(model="embedded:shapes", steps=25, guidance_scale=7.5,
                                                      batch_size=16), classes=[])
    head = AttentionHead(params=AttentionHead.Params(), classes=[ClassSpec(name=c) for c in CLASSES])
    head.attach(backend)
    oracle = load_segmenter()
    min_area = math.ceil(0.005 * backend.size * backend.size)
    scenes = [render_scene(derive_seed(args.seed, k), None, model_world()) for k in range(args.images)]
    result = {"command": f"python bench/bench_append_classes.py --images {args.images} --seed {args.seed}",
              "images": args.images, "example": {}}
    for arm in ("caption", "caption; classes"):
        requests = []
        for k, scene in enumerate(scenes):
            named = list(dict.fromkeys(i.category for i in scene.instances))
            prompt = scene.caption if arm == "caption" else class_append_prompt(scene.caption, named)
            requests.append(ImageRequest(k, derive_seed(args.seed, 10**6 + k), prompt, classes=named))
        result["example"][arm] = requests[0].prompt
        kept, generated = generate_kept(backend, requests, 16)
        requests = [requests[k] for k in kept]
        truths = list(segment(oracle, np.stack([g.image for g in generated])))
        scored = score_heads(generated, truths, [truth_instances(t, min_area) for t in truths], min_area,
                             requests, {}, head)  # the table reports tau 4 (the paper's), among every tau
        found = [{i.category for i in truth_instances(t, min_area)} for t in truths]
        fidelity = float(np.mean([len(set(r.classes) & f) / len(r.classes) for r, f in zip(requests, found)]))
        seg = scored["segmentation"]
        result[arm] = {"mIoU_tau0": seg["tau0"]["mIoU"], "mIoU_tau4_band": seg["tau4_band"]["mIoU"],
                       "named_classes_found_by_oracle": round(fidelity, 4)}
    save_result(f"{REPO}/bench/results/append_classes.json", result)


if __name__ == "__main__":
    main()
