"""Where the `attention` head's mIoU goes, and which capture settings move it.

The images of `dde bench labels` (txt2img with the segmentation oracle as truth, img2img at
strength 0.2-0.35 from model-world references with their exact masks) are generated once per
capture setting (``--params``, the head's params as JSON) and cached; then, at tau 0, 1 and 4
(alpha/beta 0.5/0.6, uncertain pixels ignored), mIoU over background and the six classes:

- ``pixel``: the head's masks (Eq. 3-5, arg-max class per pixel);
- ``vote``: each connected foreground region takes the class whose map is highest on it;
- ``clip_prompt`` / ``clip_all``: each region takes the class, among the prompt's / all six, whose
  "a photograph of a <class>" the shipped small CLIP scores highest on a crop around it (the
  region about 0.45 of the crop's side, as the CLIP's training scenes draw objects);
- ``oracle_class``: each region takes the truth's majority class (localisation alone);

on all images and on those naming two classes or more (``multi``). ``--ceiling`` instead scores
perfect class maps (the truth's one-hot, area-averaged to 8-64 cells a side) through the same
steps: what the attention resolution allows.

    python bench/bench_attention_variants.py --params '{"timesteps": [0.0, 1.0], "cross_keys": "start_and_classes"}'
    python bench/bench_attention_variants.py --ceiling

Appends one JSON line per run to bench/results/attention-variants.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import time

import numpy as np

TAUS = (0, 1, 4)
VARIANTS = ("pixel", "vote", "clip_prompt", "clip_all", "oracle_class")
OUT = os.path.join(os.path.dirname(__file__), "results", "attention-variants.jsonl")


def captures(model: str, images: int, params: dict, cache_dir: str) -> dict:
    """{"txt2img"|"img2img": [(captured maps, truth mask)]}, generated once per setting."""
    key = hashlib.sha1(json.dumps([model, images, params, "images"], sort_keys=True).encode()).hexdigest()[:10]
    path = os.path.join(cache_dir, f"attention-{key}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams
    from engine.heads.attention.head import AttentionHead
    from engine.lab.evals import labels
    from engine.lab.train.segmenter import load_segmenter, segment
    from engine.spec import ClassSpec

    backend = DiffusionBackend(params=DiffusionParams(model=model, steps=25, guidance_scale=7.5, batch_size=16,
                                                      strength=(0.2, 0.35)), classes=[])
    head = AttentionHead(params=labels._head_params(params), classes=[ClassSpec(name=c) for c in labels.CLASSES])
    head.attach(backend)
    _, generated = labels.generate_kept(backend, labels.txt2img_requests(images, 0), 16)
    truths = segment(load_segmenter(), np.stack([g.image for g in generated]))
    data = {"txt2img": [(g.extras["attention"], t, g.image) for g, t in zip(generated, truths)]}
    requests, scenes = labels.img2img_requests(images, 0, "model", backend.size)
    kept, generated = labels.generate_kept(backend, requests, 16)
    data["img2img"] = [(g.extras["attention"], scenes[k].semantic, g.image) for g, k in zip(generated, kept)]
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return data


def _regions(maps: np.ndarray, ids: list[int], assign) -> np.ndarray:
    """The head's mask with each connected foreground region given one class by ``assign(region)``."""
    from skimage.measure import label

    from engine.heads.attention import semantic_mask

    mask, objectness = semantic_mask(maps, ids, 0.5, 0.6)
    regions, count = label(objectness >= 0.6, connectivity=2, return_num=True)
    for k in range(1, count + 1):
        region = regions == k
        mask[region] = assign(region)
    return mask


def _crop(image: np.ndarray, region: np.ndarray, scale: float = 0.45) -> np.ndarray:
    """A square crop around ``region`` in which the region spans about ``scale`` of the side
    (the CLIP's training scenes draw objects at 0.3-0.55 of the canvas), edge-padded."""
    ys, xs = np.nonzero(region)
    side = max(int(round((max(np.ptp(ys), np.ptp(xs)) + 1) / scale)), 16)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    padded = np.pad(image, ((side, side), (side, side), (0, 0)), mode="edge")
    y0, x0 = cy - side // 2 + side, cx - side // 2 + side
    return padded[y0:y0 + side, x0:x0 + side]


_CLIP = {}


def _clip_class(image: np.ndarray, region: np.ndarray, candidates: list[int]) -> int:
    from engine.lab.evals.labels import CLASSES
    from engine.models.clip_embeddings import EMBEDDED_CLIP, image_embeddings, load_clip, text_embeddings
    from engine.job.phrases import objects_phrase

    if not _CLIP:
        _CLIP["clip"] = load_clip(EMBEDDED_CLIP)
        _CLIP["texts"] = text_embeddings(_CLIP["clip"], [f"a photograph of {objects_phrase([c])}" for c in CLASSES])
    crop = _crop(image, region)
    scores = (image_embeddings(_CLIP["clip"], [crop]) @ _CLIP["texts"].T)[0].numpy()
    return max(candidates, key=lambda i: scores[i - 1])


def variant_mask(name: str, maps: np.ndarray, ids: list[int], truth: np.ndarray, image: np.ndarray) -> np.ndarray:
    from engine.heads.attention import semantic_mask

    if name == "pixel":
        return semantic_mask(maps, ids, 0.5, 0.6)[0]
    if name == "vote":
        return _regions(maps, ids, lambda region: ids[int(maps[:, region].mean(1).argmax())])
    if name == "clip_prompt":
        return _regions(maps, ids, lambda region: _clip_class(image, region, ids))
    if name == "clip_all":
        return _regions(maps, ids, lambda region: _clip_class(image, region, list(range(1, 7))))

    def majority(region):
        found = truth[region][truth[region] > 0]
        return np.bincount(found).argmax() if len(found) else 0

    return _regions(maps, ids, majority)


def score(data: dict) -> dict:
    from engine.heads.attention import class_maps
    from engine.lab.evals.labels import CATEGORY_ID, NUM_CLASSES
    from engine.lab.metrics.segmentation import confusion, iou_table

    result = {}
    for source, items in data.items():
        conf: dict = {}
        for captured, truth, image in items:
            ids = [CATEGORY_ID[c] for c in captured["classes"]]
            for tau in TAUS:
                maps = class_maps(captured, truth.shape[0], tau)
                for name in VARIANTS:
                    c = confusion(variant_mask(name, maps, ids, truth, image), truth, NUM_CLASSES)
                    for subset in ("all", "multi") if len(ids) > 1 else ("all",):
                        conf[(name, tau, subset)] = conf.get((name, tau, subset), 0) + c
        result[source] = {f"{name} tau{tau} {subset}": round(iou_table(c)[0], 4)
                          for (name, tau, subset), c in sorted(conf.items())}
    return result


def ceiling(images: int) -> dict:
    """mIoU of perfect class maps at each side, through the head's min-max and Eq. 5."""
    import torch
    import torch.nn.functional as F

    from engine.heads.attention import semantic_mask
    from engine.lab.evals.labels import NUM_CLASSES
    from engine.lab.metrics.segmentation import confusion, iou_table
    from engine.models.embedded import named_world
    from engine.world import CLASSES, render_scene

    out = {}
    for world in ("model", "default"):
        config = named_world(world)
        scenes = [render_scene(10_000 + k, config=config) for k in range(images)]
        for side in (8, 16, 32, 64):
            conf = 0
            for scene in scenes:
                present = sorted({CLASSES.index(i.category) for i in scene.instances})
                onehot = torch.stack([torch.from_numpy(scene.semantic == 1 + c).float() for c in present])
                maps = F.interpolate(F.adaptive_avg_pool2d(onehot[None], side), scene.semantic.shape,
                                     mode="bicubic", align_corners=False)[0]
                low = maps.amin(dim=(1, 2), keepdim=True)
                maps = ((maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-12)).clamp(0, 1)
                conf = conf + confusion(semantic_mask(maps.numpy(), [1 + c for c in present])[0], scene.semantic,
                                        NUM_CLASSES)
            out[f"{world} world, {side}x{side}"] = round(iou_table(conf)[0], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:shapes")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--params", default="{}", help="attention head params as JSON")
    parser.add_argument("--cache", default="bench/out/attention-variants")
    parser.add_argument("--ceiling", action="store_true")
    args = parser.parse_args()
    started = time.time()
    if args.ceiling:
        row = {"ceiling": ceiling(200)}
    else:
        params = json.loads(args.params)
        row = {"model": args.model, "images": args.images, "params": params,
               **score(captures(args.model, args.images, params, args.cache))}
    row["seconds"] = round(time.time() - started, 1)
    print(json.dumps(row, indent=1))
    with open(OUT, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
