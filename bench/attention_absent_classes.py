"""How much of the attention head's txt2img mIoU is lost to prompted classes the model did not draw?
The labels bench's txt2img images (96, ``txt2img_requests(96, SEED)``) and its truth (the
segmentation oracle); the upper bound of an absent-class test: zero the predicted pixels of every
prompted class the oracle finds less than the head's smallest instance of:

    OMP_NUM_THREADS=1 python bench/attention_absent_classes.py SEED
"""
import json
import sys

import numpy as np

from engine.backends.diffusion import DiffusionBackend, DiffusionParams
from engine.heads.attention import class_maps, semantic_mask
from engine.heads.attention.head import AttentionHead
from engine.lab.evals.labels import CATEGORY_ID, _Scores, generate_kept, txt2img_requests
from engine.lab.train.segmenter import load_segmenter, segment
from engine.spec import ClassSpec
from engine.world import CLASSES
seed = int(sys.argv[1])
backend = DiffusionBackend(params=DiffusionParams(model="embedded:shapes", steps=25, guidance_scale=7.5, batch_size=16,
                                                  strength=(0.2, 0.35)), classes=[])
head = AttentionHead(params=AttentionHead.Params(), classes=[ClassSpec(name=c) for c in CLASSES])
head.attach(backend)
min_area = head.min_pixels(backend.size, backend.size)
requests = txt2img_requests(96, seed)
kept, generated = generate_kept(backend, requests, 16)
truths = list(segment(load_segmenter(), np.stack([g.image for g in generated])))
scores = _Scores(); prompted = absent = 0; absent_images = 0
for gen, truth in zip(generated, truths):
    captured = gen.extras["attention"]
    ids = [CATEGORY_ID[c] for c in captured["classes"]]
    mask = semantic_mask(class_maps(captured, truth.shape[0], head.tau), ids, 0.5, 0.6)[0]
    scores.add("head", mask, truth)
    missing = [i for i in ids if (truth == i).sum() < min_area]
    prompted += len(ids); absent += len(missing); absent_images += bool(missing)
    fixed = mask.copy()
    for i in missing:
        fixed[fixed == i] = 0
    scores.add("absent_classes_suppressed", fixed, truth)
    if not missing:
        scores.add("images_with_every_class_drawn", mask, truth)
t = scores.table()
print(json.dumps({"seed": seed, "prompted_classes": prompted, "absent": absent, "images_with_an_absent_class": absent_images,
                  "images": len(truths), **{k: v["mIoU"] for k, v in t.items()}}))
