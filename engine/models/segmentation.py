"""The shipped segmenter of the shapes world (``engine/models/segmenter``): a small U-Net that gives
every pixel of a 64 px shapes-world image its class (0 background, k = 1 + ``world.CLASSES`` index,
the convention of ``Scene.semantic``). Trained by ``dde train segmenter`` (``lab/train/segmenter.py``);
read by the labels benchmark (as the segmentation oracle), by High-quality Image Selection
(``job/selection.py``) and by the Mask Generator for references without masks (``job/masks.py``).
"""

from __future__ import annotations

import numpy as np

from ..world import CLASSES
from .shipped import SEGMENTER_DIR
from .trained import load_trained

__all__ = ["NUM_LABELS", "build_segmenter", "load_segmenter", "segment", "to_input"]

NUM_LABELS = len(CLASSES) + 1  # background + one per class


def to_input(images: np.ndarray):
    """uint8 images (N,H,W,3) as a float tensor (N,3,H,W) in [-1, 1], as the oracles are trained."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def build_segmenter():
    """A U-Net over 64, 32 and 16 px (16, 32, 64 channels; 193k parameters) whose 16 px stage
    dilates by 2, 4 and 8, so every pixel sees the whole image: a whole object (19-35 px) and
    its outline, which is what tells the classes apart."""
    import torch
    import torch.nn as nn

    def conv(cin, cout, dilation=1):
        return [nn.Conv2d(cin, cout, 3, 1, dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    class UNet(nn.Module):
        def __init__(self, widths=(16, 32, 64)):
            super().__init__()
            a, b, c = widths
            self.enc1 = nn.Sequential(*conv(3, a), *conv(a, a))
            self.enc2 = nn.Sequential(nn.MaxPool2d(2), *conv(a, b), *conv(b, b))
            self.enc3 = nn.Sequential(nn.MaxPool2d(2), *conv(b, c), *conv(c, c, 2), *conv(c, c, 4), *conv(c, c, 8))
            self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.dec2 = nn.Sequential(*conv(c + b, b), *conv(b, b))
            self.dec1 = nn.Sequential(*conv(b + a, a), *conv(a, a))
            self.head = nn.Conv2d(a, NUM_LABELS, 1)

        def forward(self, x):
            x1 = self.enc1(x)
            x2 = self.enc2(x1)
            x3 = self.enc3(x2)
            y = self.dec2(torch.cat([self.up2(x3), x2], 1))
            y = self.dec1(torch.cat([self.up2(y), x1], 1))
            return self.head(y)

    return UNet()


def load_segmenter(folder: str = SEGMENTER_DIR):
    return load_trained(build_segmenter(), folder, "segmenter", "segmenter")


def segment(model, images: np.ndarray, min_confidence: float | None = None, chunk: int = 256) -> np.ndarray:
    """uint8 label maps (N,H,W) for a batch of uint8 images (N,H,W,3). With ``min_confidence``,
    a pixel whose top class has a lower softmax probability is 255 (uncertain) instead."""
    import torch

    labels = np.zeros(images.shape[:3], np.uint8)
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            confidence, best = model(to_input(images[i:i + chunk])).softmax(1).max(1)
            if min_confidence is not None:
                best[confidence < min_confidence] = 255
            labels[i:i + chunk] = best.numpy()
    return labels
