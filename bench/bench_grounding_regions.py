"""How to crop a region for the CLIP, and how much the CLIP should weigh, in the grounding head's
ViLD region classification (engine/heads/boxes/regions.py).

img2img images of all six classes at strength 0.2-0.35 from the model's world (the labels
benchmark's, whose references' boxes are the truth); a grounding head's boxes and scores over
all six names (``--weights``, default the shipped head); then, per crop, padding and weight
(``SETTINGS`` on the head before self-training, the shipped setting on both stages), box AP50
over all classes, base and novel (COCOeval, score floor 0.05; class-wise NMS as a job decodes:
``detector.NMS_IOU`` for the head alone, ``regions.REGION_NMS_IOU`` with the CLIP). Crops:

- ``in_place``: the shipped one (box widened by the padding, kept where it is, the rest filled
  with the border's median colour);
- ``centred``: the same pixels moved to the image's centre;
- ``resized``: the widened box cut out and resized to the image size (CLIP's usual crop).

    python bench/bench_grounding_regions.py [--weights DIR] [--images 240] [--seed 0]

Writes bench/results/grounding-regions.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

# (crop, padding, ViLD's lambda): paddings at the paper's lambda 2/3, then lambda at the shipped padding 1.2
SETTINGS = [*(("in_place", p, 2 / 3) for p in (1.0, 1.2, 1.4, 1.7)), ("in_place", 1.2, 0.5), ("in_place", 1.2, 1.0),
            ("centred", 1.2, 2 / 3), ("resized", 1.2, 2 / 3), ("resized", 1.5, 2 / 3)]
SHIPPED = ("in_place", 1.2, 2 / 3)


def centred(image: np.ndarray, boxes: np.ndarray, padding: float) -> np.ndarray:
    from engine.heads.clip_regions import region_crops

    out = region_crops(image, boxes, padding)
    size = image.shape[0]
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        dx, dy = int(round(size / 2 - (x0 + x1) / 2)), int(round(size / 2 - (y0 + y1) / 2))
        fill = out[n, 0, 0].copy() if (x0 > 0 and y0 > 0) else out[n, -1, -1].copy()
        shifted = np.empty_like(out[n])
        shifted[:] = fill
        src = out[n][max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)]
        shifted[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        out[n] = shifted
    return out


def resized(image: np.ndarray, boxes: np.ndarray, padding: float) -> np.ndarray:
    from PIL import Image

    size = image.shape[0]
    crops = []
    for x0, y0, x1, y1 in boxes:
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, padding * max(x1 - x0, y1 - y0) / 2
        left, top = max(int(round(cx - half)), 0), max(int(round(cy - half)), 0)
        right, bottom = min(max(int(round(cx + half)), left + 1), size), min(max(int(round(cy + half)), top + 1), size)
        crops.append(np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((size, size), Image.BICUBIC)))
    return np.stack(crops)


def main() -> None:
    import torch

    import engine.heads.boxes.regions as regions
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.heads.boxes.detector import NMS_IOU, detections
    from engine.heads.clip_regions import region_crops
    from engine.heads.grounding import GroundingHead
    from engine.lab.evals.labels import generate_kept, img2img_requests
    from engine.lab.metrics.boxes import box_ap
    from engine.records import Instance
    from engine.spec import ClassSpec
    from engine.world import CLASSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="a grounding head's folder (default: the shipped one)")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    backend = DiffusionBackend(params=DiffusionParams(model="embedded:shapes", steps=25, guidance_scale=7.5,
                                                      batch_size=16, strength=(0.2, 0.35)), classes=[])
    requests, scenes = img2img_requests(args.images, args.seed, "model", backend.size)
    kept, generated = generate_kept(backend, requests, 16)
    truth = [[Instance(i.category, i.mask) for i in scenes[k].instances] for k in kept]
    requests = [requests[k] for k in kept]
    weights = f"--weights {args.weights} " if args.weights else ""
    result = {"command": f"python bench/bench_grounding_regions.py {weights}--images {args.images} --seed {args.seed}",
              "images": len(kept), "rows": []}
    images = [g.image for g in generated]
    for stage in ("base", "self_trained"):
        head = GroundingHead(params=GroundingHead.Params(weights=args.weights, threshold=0.05, stage=stage,
                                                         region_clip="embedded:clip"),
                             classes=[ClassSpec(name=c) for c in CLASSES])
        head.attach(backend)
        names, text = head.vocabulary()
        with torch.no_grad():  # the detector's output once; each setting rescores it
            parts = [head.detector(head.features(requests, generated, list(range(a, min(a + 16, len(kept))))), text)
                     for a in range(0, len(kept), 16)]
        out = {k: torch.cat([p[k] for p in parts]) for k in ("logits", "boxes")}
        seen = head.card["classes_seen"]
        for crop, padding, weight in [("head_only", None, None), *(SETTINGS if stage == "base" else [SHIPPED])]:
            scored = out
            if crop != "head_only":
                cut = {"in_place": region_crops, "centred": centred, "resized": resized}[crop]
                scored = regions.clip_rescored(
                    out, images, head.clip, head.clip_text, head.seen, backend.size, weight,
                    crop=lambda image, boxes, _cut=cut, _pad=padding: _cut(image, boxes, _pad))
            found = [[Instance(names[c], score=s, box=tuple(box)) for c, s, box in image if names[c]]
                     for image in detections(scored, 0.05, backend.size,
                                             NMS_IOU if crop == "head_only" else regions.REGION_NMS_IOU)]
            scores = box_ap(truth, found, backend.size, groups={"base": seen["base"], "novel": seen["novel"]})
            row = {"stage": stage, "crop": crop, "padding": padding, "clip_weight": weight,
                   **{k: scores[k] for k in ("AP50", "base_AP50", "novel_AP50")}}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    result["seconds"] = round(time.time() - started, 1)
    with open("bench/results/grounding-regions.json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# Grounding: region classification by the shapes CLIP ({result['images']} img2img images)", "",
             f"`{result['command']}`, {result['seconds']} s. AP50 (%), COCOeval, score floor 0.05.", "",
             "| stage | crop | padding | CLIP weight (unseen) | AP50 | base AP50 | novel AP50 |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        weight = "-" if r["clip_weight"] is None else f"{r['clip_weight']:.2f}"
        lines.append(f"| {r['stage']} | {r['crop']} | {r['padding'] or '-'} | {weight} | {100 * r['AP50']:.1f} | "
                     f"{100 * r['base_AP50']:.1f} | {100 * r['novel_AP50']:.1f} |")
    with open("bench/results/grounding-regions.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
