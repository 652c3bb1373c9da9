"""Semantic masks hold any vocabulary: uint8 palette PNGs up to 254 classes, uint16 PNGs beyond
(LVIS has 1,203), so class 255 is never read as 'uncertain' (paper-fidelity review, bug 2)."""

import io

import numpy as np
from PIL import Image

from engine.heads.attention import semantic_mask
from engine.output.sink import encode_png, semantic_palette
from engine.records import semantic_dtype, uncertain_value


def test_dtype_follows_the_vocabulary():
    assert semantic_dtype(6) == np.uint8 and uncertain_value(semantic_dtype(254)) == 255
    assert semantic_dtype(255) == np.uint16 and uncertain_value(semantic_dtype(1203)) == 65535


def test_class_255_and_beyond_keep_their_ids_and_uncertain_is_separate():
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[0, 0, :] = 1.0       # class 255: certain
    maps[1, 1, :] = 1.0       # class 256: certain
    maps[2, 2, :] = 0.55      # class 1203: in the uncertain band
    mask, _ = semantic_mask(maps, [255, 256, 1203], alpha=0.5, beta=0.6, dtype=semantic_dtype(1203))
    assert mask.dtype == np.uint16
    assert mask[0].tolist() == [255] * 4 and mask[1].tolist() == [256] * 4
    assert mask[2].tolist() == [65535] * 4 and mask[3].tolist() == [0] * 4


def test_masks_round_trip_through_png_in_both_widths():
    wide = np.array([[0, 255, 256], [1203, 65535, 7]], dtype=np.uint16)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(wide))))
    assert decoded.dtype.itemsize >= 2 and decoded.astype(np.int64).tolist() == wide.tolist()
    narrow = np.array([[0, 1, 255]], dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_png(narrow, semantic_palette())))
    assert image.mode == "P" and np.asarray(image).tolist() == narrow.tolist()
