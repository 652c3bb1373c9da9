"""The Multi-way Prompt Generator (issue 14): ways, K variants per reference, captions from a file or a
captioner (a tiny random BLIP built from config)."""

import json
import os
from collections import Counter

import numpy as np
import pytest

from engine.errors import SpecError
from engine.job.multiway import allot_ways
from engine.job.prompts import build_pool
from engine.spec import parse_spec

WORLD = ["circle", "square", "triangle", "star", "ring", "cross"]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    from engine.world import export_coco

    root = tmp_path_factory.mktemp("refs")
    export_coco(root, 6, "train", seed=4)
    return str(root)


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "circle", "square", "red", "on", "blue"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    text = dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                encoder_hidden_size=32, bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3,
                max_position_embeddings=64)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        str(folder), safe_serialization=True)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(str(folder))
    return str(folder)


def multiway_spec(spec_data, references, **prompts):
    spec_data["classes"] = WORLD
    spec_data["prompts"] = {"source": "references", "annotations": f"{references}/annotations/instances_train.json",
                            "images": f"{references}/images/train", "style": "multiway", **prompts}
    return parse_spec(spec_data)


def test_ways_are_allotted_by_weight_and_rotate_over_references():
    even = {"caption": 1, "caption_classes": 1, "classes": 1}
    assert Counter(w for n in range(30) for w in allot_ways(even, 1, n)) == {"caption": 10, "caption_classes": 10,
                                                                             "classes": 10}
    assert Counter(allot_ways({"caption": 3, "classes": 1}, 4)) == {"caption": 3, "classes": 1}
    assert Counter(w for n in range(4) for w in allot_ways(even, 4, n)) == {"caption": 6, "caption_classes": 5,
                                                                            "classes": 5}


def test_k_variants_per_reference_in_three_ways(spec_data, references):
    spec = multiway_spec(spec_data, references, captions=f"{references}/annotations/captions_train.json", variants=3)
    pool = build_pool(spec)
    captions = {str(a["image_id"]): a["caption"]
                for a in json.load(open(f"{references}/annotations/captions_train.json"))["annotations"]}
    assert len(pool) == 3 * 6 and Counter(i.reference_id for i in pool) == {k: 3 for k in captions}
    for item in pool:
        caption, names = captions[item.reference_id], list(dict.fromkeys(item.classes))
        forms = {caption, f"{caption.rstrip('.')}; {' '.join(names)}", ", ".join(names)}
        assert item.prompt in forms and item.reference_uri.endswith(".png")
    by_reference = {}
    for item in pool:
        by_reference.setdefault(item.reference_id, set()).add(item.prompt)
    assert all(len(prompts) == 3 for prompts in by_reference.values())  # the three ways, one each


def test_captioner_captions_the_images_the_file_lacks(spec_data, references, tiny_blip, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from PIL import Image

    captions = json.load(open(f"{references}/annotations/captions_train.json"))
    kept = captions["annotations"][:2]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({**captions, "annotations": kept}))
    spec = multiway_spec(spec_data, references, captions=str(path), captioner=tiny_blip,
                         ways={"caption": 1, "caption_classes": 0, "classes": 0})
    pool = {i.reference_id: i.prompt for i in build_pool(spec)}
    assert all(pool[str(a["image_id"])] == a["caption"] for a in kept)
    model = AutoModelForImageTextToText.from_pretrained(tiny_blip).eval()
    processor = AutoProcessor.from_pretrained(tiny_blip)
    lacking = sorted(set(pool) - {str(a["image_id"]) for a in kept})
    for ref in lacking:
        name = next(i["file_name"] for i in captions["images"] if str(i["id"]) == ref)
        image = np.array(Image.open(os.path.join(references, "images", "train", name)).convert("RGB"))
        ids = model.generate(**processor(images=[image], return_tensors="pt"), max_new_tokens=30)
        assert pool[ref] == processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_multiway_needs_base_captions(spec_data, references):
    with pytest.raises(SpecError, match="style 'multiway' expected a 'captions' file or a 'captioner' model"):
        multiway_spec(spec_data, references)
    with pytest.raises(SpecError, match="positive sum"):
        multiway_spec(spec_data, references, captions="c.json", ways={"caption": 0})
