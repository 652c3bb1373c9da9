"""The segmentation oracle: the shipped weights segment rendered val scenes; the IoU helpers count exactly."""

import json
import os
import subprocess

import numpy as np
import pytest

from engine.errors import UserError
from engine.lab.metrics.segmentation import confusion, iou_table, pixel_accuracy
from engine.lab.train.segmenter import VAL_STREAM, load_segmenter, rendered_scenes, segment, train_segmenter
from engine.models.shipped import SEGMENTER_DIR

from .conftest import DDE


def test_confusion_and_iou_on_hand_made_maps_with_an_ignore_label():
    pred = np.array([[0, 1, 1], [2, 2, 255]], np.uint8)
    target = np.array([[0, 1, 2], [2, 255, 1]], np.uint8)
    conf = confusion(pred, target, 4)  # class 3 appears nowhere; 255 on either side drops the pixel
    assert conf.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    miou, per_class = iou_table(conf)
    assert per_class[:3] == [1.0, 0.5, 0.5] and np.isnan(per_class[3])
    assert miou == pytest.approx(2 / 3)
    assert pixel_accuracy(conf) == 0.75
    # batches accumulate: the same maps twice double every count, and IoU does not move
    assert (confusion(np.stack([pred, pred]), np.stack([target, target]), 4) == 2 * conf).all()
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion(np.array([4]), np.array([0]), 4)


def test_training_writes_safetensors_and_a_card(tmp_path):
    card = train_segmenter(out=str(tmp_path), steps=2, batch=4, vae_pool=8, val_images=8, echo=lambda *_: None)
    assert sorted(os.listdir(tmp_path)) == ["segmenter.json", "segmenter.safetensors"]
    assert json.load(open(tmp_path / "segmenter.json")) == card
    assert set(card["vae_round_trip_val"]["iou"]) == {"background", "circle", "square", "triangle", "star",
                                                      "ring", "cross"}
    labels = segment(load_segmenter(str(tmp_path)), rendered_scenes(1, 3)[0])
    assert labels.shape == (3, 64, 64) and labels.dtype == np.uint8 and labels.max() <= 6


def test_missing_weights_name_the_command(tmp_path):
    with pytest.raises(UserError, match="run `dde train segmenter`"):
        load_segmenter(str(tmp_path))


@pytest.mark.skipif(not os.path.exists(os.path.join(SEGMENTER_DIR, "segmenter.safetensors")),
                    reason="the segmenter is not trained yet (dde train segmenter)")
def test_shipped_segmenter_segments_rendered_val():
    images, semantic = rendered_scenes(VAL_STREAM, 100)
    miou, _ = iou_table(confusion(segment(load_segmenter(), images), semantic, 7))
    assert miou >= 0.85
    unsure = segment(load_segmenter(), images[:8], min_confidence=0.9)
    assert 0 < (unsure == 255).mean() < 0.1 and set(np.unique(unsure)) <= {0, 1, 2, 3, 4, 5, 6, 255}
    assert os.path.getsize(os.path.join(SEGMENTER_DIR, "segmenter.safetensors")) < 2 * 2**20


def test_zero_steps_are_refused_with_exit_2():
    proc = subprocess.run([DDE, "train", "segmenter", "--steps", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "argument --steps: expected" in proc.stderr
    assert "Traceback" not in proc.stderr
