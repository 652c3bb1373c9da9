"""The Multi-way Prompt Generator (Diffusion Synthesis, Sec. 3.1): prompts for references in three ways.

- ``caption``: the base caption P_i, from the COCO captions file or, for images it lacks, from a
  captioner (any transformers image-to-text model, e.g. BLIP, by folder or hub id; safetensors,
  no remote code);
- ``caption_classes``: the caption with the image's class names appended, P'_i = {P_i; C_i}
  (``prompts.class_append_prompt``);
- ``classes``: the class names alone.

``prompts.ways`` weighs the three; ``prompts.variants`` = K prompts per reference, planned as K pool
items (each image the planner makes from them gets its own seed; ``prompts._reference_pool``). The K ways of a reference are
allotted by largest remainder over the weights, the remainder rotating with the reference's
position, so that over many references the mix matches the weights even for K = 1.
"""

from __future__ import annotations

__all__ = ["WAYS", "allot_ways", "caption_images"]

WAYS = ("caption", "caption_classes", "classes")


def allot_ways(weights: dict[str, float], k: int, offset: int = 0) -> list[str]:
    """K ways in proportion to ``weights`` (largest remainder); ties and the remainder rotate with ``offset``."""
    ways = [w for w in WAYS if weights.get(w, 0) > 0]
    total = sum(weights[w] for w in ways)
    shares = [k * weights[w] / total for w in ways]
    counts = [int(s) for s in shares]
    order = sorted(range(len(ways)), key=lambda i: (-(shares[i] - counts[i]), (i - offset) % len(ways)))
    for i in order[:k - sum(counts)]:
        counts[i] += 1
    allotted = [w for w, n in zip(ways, counts) for _ in range(n)]
    return allotted[offset % k:] + allotted[:offset % k] if k else []


def caption_images(model: str, references, spec, batch: int = 16) -> dict[str, str]:
    """Reference id -> the captioner's caption of its image (greedy decoding, at most 30 new tokens)."""
    import fsspec
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..images import decode_rgb
    from ..output.storage import input_options

    captioner = AutoModelForImageTextToText.from_pretrained(model, use_safetensors=True).eval()
    processor = AutoProcessor.from_pretrained(model)
    captions = {}
    for start in range(0, len(references), batch):
        chunk = references[start:start + batch]
        images = []
        for ref in chunk:
            with fsspec.open(ref.uri, "rb", **input_options(ref.uri, spec)) as f:
                images.append(decode_rgb(f.read(), spec.prompts.max_image_pixels))
        with torch.no_grad():
            ids = captioner.generate(**processor(images=images, return_tensors="pt"), max_new_tokens=30)
        for ref, text in zip(chunk, processor.batch_decode(ids, skip_special_tokens=True)):
            captions[ref.id] = text.strip() or f"A {spec.prompts.domain}"
    return captions
