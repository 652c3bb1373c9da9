"""The Mask Generator (Diffusion Synthesis, Sec. 3.1 "Overall Structure": an open-vocabulary detector's
boxes prompt a box-guided segmenter, so a reference needs no mask labels, or no labels at all).

Configured by ``generator.params.condition.mask_generator`` (``backends.conditions.MaskGeneratorParams``)
and used by ``job.conditions.ReferenceMasks`` for the references whose annotations of the job's
classes have boxes but no segmentation (their own boxes prompt the segmenter) and for those without
any annotation (the detector's boxes do).

Boxes (``detector``), as ``(job class, (x0, y0, x1, y1))`` in the reference's pixels (float):

- a transformers zero-shot object detection model, by folder or hub id (OwlViT, Owlv2, Grounding
  DINO: ``AutoModelForZeroShotObjectDetection`` + ``AutoProcessor``, safetensors only, no remote
  code), prompted with the job's class names; detections scoring at least ``threshold`` are kept;
- ``embedded:adapter`` / ``embedded:grounding``: dde's shipped box heads run on the reference through
  Eq. 4 (the reference, resized to the model's side, encoded, noised to t = 1, one UNet pass: the
  features they were trained on), on the job's own pipeline; the model must be ``embedded:shapes``.
  ``embedded:grounding`` names its boxes with the shapes CLIP, as the grounding head does by
  default (``region_clip: auto``, engine/heads/boxes/regions.py).

Masks (``segmenter``), one bool HxW array per box, at the reference's size:

- a transformers ``SamModel`` + ``SamProcessor`` folder or hub id, prompted with every box of the
  reference at once (``multimask_output=False``; masks at SAM's 0 logit threshold);
- ``embedded:segmenter``: the shipped shapes-world segmenter (64 px) labels the reference; a box's
  mask is its class's pixels inside the box, or, where fewer than half of the box's foreground pixels
  get its class (the segmenter took it for another), the box's foreground pixels. On 40 rendered
  references with their masks removed, the masks made from their boxes reach a mean instance IoU
  of 0.895 with the removed ones (class pixels alone: 0.749). Without boxes, each connected region
  of a class is an instance (a reference without annotations and no detector).
"""

from __future__ import annotations

import inspect
import json
import os

import numpy as np

from .classnames import normalise
from .selection import EMBEDDED_SEGMENTER

__all__ = ["MaskGenerator", "mask_generator_problems", "resize_array", "EMBEDDED_SEGMENTER", "HEAD_DETECTORS"]

FIELD = "generator.params.condition.mask_generator"
HEAD_DETECTORS = {"embedded:adapter": "adapter", "embedded:grounding": "grounding"}

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def _head_class(name: str):
    if HEAD_DETECTORS[name] == "adapter":
        from ..heads.adapter import AdapterHead

        return AdapterHead
    from ..heads.grounding import GroundingHead

    return GroundingHead


def _model_type(model: str) -> str | None:
    """``model_type`` of a local folder's config.json; None for a hub id or a folder without one."""
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("model_type")


def _world_index(job_class) -> int | None:
    """1 + the shapes-world index of the world class a job class names (by name or synonym), else None."""
    from ..world import CLASSES

    world = next((w.lower() for w in job_class.words if w.lower() in CLASSES), None)
    return None if world is None else 1 + CLASSES.index(world)


def mask_generator_problems(spec, params) -> list[str]:
    """Why the configured Mask Generator cannot serve this job (one message each); empty if it can.
    Checked when the job starts, before anything is written."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES

    from ..models import is_hub_id

    problems = []
    if params.segmenter == EMBEDDED_SEGMENTER:
        unknown = [c.name for c in spec.class_specs if _world_index(c) is None]
        if unknown:
            from ..world import CLASSES

            problems.append(f"{FIELD}.segmenter: expected job classes the shipped segmenter knows {list(CLASSES)} (by "
                            f"name or synonym), got {unknown}; use a SamModel folder or hub id")
    elif not is_hub_id(params.segmenter) and _model_type(params.segmenter) != "sam":
        problems.append(f"{FIELD}.segmenter: expected 'embedded:segmenter', a transformers SamModel folder (config.json "
                        f"with model_type 'sam', safetensors, SamProcessor files) or a hub id, got "
                        f"{params.segmenter!r} (model_type {_model_type(params.segmenter)!r})")
    detector = params.detector
    if detector is None:
        return problems
    if detector in HEAD_DETECTORS:
        model = spec.generator.config.model
        if model != "embedded:shapes":
            problems.append(f"{FIELD}.detector: expected model 'embedded:shapes' for {detector!r} (the shipped head "
                            f"reads that model's UNet features), got model {model!r}; use a transformers zero-shot "
                            f"detector instead")
        else:
            head = _head_class(detector)
            problems += [f"{FIELD}.detector: {p}" for p in head.check_classes(head.Params(), [c.name for c in spec.class_specs])]
    elif detector.startswith("embedded:"):
        problems.append(f"{FIELD}.detector: expected {' or '.join(map(repr, HEAD_DETECTORS))}, a zero-shot detection "
                        f"folder or a hub id, got {detector!r}")
    elif not is_hub_id(detector) and _model_type(detector) not in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES:
        problems.append(f"{FIELD}.detector: expected a transformers zero-shot object detection folder (config.json with "
                        f"model_type one of {sorted(MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES)}, safetensors, "
                        f"processor files) or a hub id, got {detector!r} (model_type {_model_type(detector)!r})")
    return problems


def _clip(box, height: int, width: int) -> Box | None:
    """A box clipped to the image; None if nothing of it is left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, min(x0, x1)), min(float(width), max(x0, x1))
    y0, y1 = max(0.0, min(y0, y1)), min(float(height), max(y0, y1))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def resize_array(image: np.ndarray, height: int, width: int, resample) -> np.ndarray:
    """An image or label map (uint8 HxW[x3]) at height x width with a PIL resample filter (itself if it fits)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


class MaskGenerator:
    """Boxes and masks for references without masks. Models load on first use, in the worker;
    ``backend`` (the job's, loaded) serves the ``embedded:adapter``/``embedded:grounding`` detectors."""

    def __init__(self, params, classes, backend=None):
        self.params, self.classes, self.backend = params, list(classes), backend
        self.names = [c.name for c in self.classes]
        self._detector = self._segmenter = None

    # ---- boxes
    def detect(self, image: np.ndarray) -> list[tuple[str, Box]]:
        """(job class, box) of each object the detector finds in ``image`` (uint8 HxWx3), best first."""
        if self.params.detector in HEAD_DETECTORS:
            found = self._head_boxes(image)
        else:
            found = self._zero_shot_boxes(image)
        height, width = image.shape[:2]
        clipped = [(name, _clip(box, height, width), score) for name, box, score in found]
        return [(name, box) for name, box, _ in sorted((f for f in clipped if f[1] is not None), key=lambda f: -f[2])]

    def _zero_shot_boxes(self, image: np.ndarray) -> list[tuple[str, Box, float]]:
        import torch

        if self._detector is None:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

            model = AutoModelForZeroShotObjectDetection.from_pretrained(self.params.detector, use_safetensors=True)
            self._detector = (model.eval(), AutoProcessor.from_pretrained(self.params.detector))
        model, processor = self._detector
        inputs = processor(text=[self.names], images=[image], return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        post = processor.post_process_grounded_object_detection
        accepted = inspect.signature(post).parameters
        extra = {"input_ids": inputs.get("input_ids"), "text_threshold": self.params.threshold}  # Grounding DINO's
        result = post(outputs, threshold=self.params.threshold, target_sizes=[image.shape[:2]],
                      text_labels=[self.names], **{k: v for k, v in extra.items() if k in accepted})[0]
        by_word = {normalise(w): c.name for c in self.classes for w in c.words}
        texts = result.get("text_labels") or [self.names[int(k)] for k in result["labels"]]
        return [(by_word[normalise(text)], tuple(box.tolist()), float(score))
                for text, box, score in zip(texts, result["boxes"], result["scores"]) if normalise(text) in by_word]

    def _head_boxes(self, image: np.ndarray) -> list[tuple[str, Box, float]]:
        from PIL import Image

        from ..records import Generated, ImageRequest

        if self._detector is None:
            head_class = _head_class(self.params.detector)
            head = head_class(params=head_class.Params(threshold=self.params.threshold), classes=self.classes)
            head.attach(self.backend)
            self._detector = head
        size, (height, width) = self.backend.size, image.shape[:2]
        square = resize_array(image, size, size, Image.BICUBIC)  # what the head was trained on: the model's side
        labels = self._detector.label([ImageRequest(0, 0, "")], [Generated(square)])[0]
        sx, sy = width / size, height / size
        return [(i.category, (i.box[0] * sx, i.box[1] * sy, (i.box[0] + i.box[2]) * sx, (i.box[1] + i.box[3]) * sy),
                 i.score) for i in labels.instances]

    # ---- masks
    def masks(self, image: np.ndarray, boxes: list[tuple[str, Box]]) -> list[tuple[str, np.ndarray]]:
        """(job class, bool HxW mask) for each box, prompted by it, at the image's size."""
        if not boxes:
            return []
        if self.params.segmenter == EMBEDDED_SEGMENTER:
            semantic = self._semantic(image)
            index = {c.name: _world_index(c) for c in self.classes}
            out = []
            for name, (x0, y0, x1, y1) in boxes:
                inside = np.zeros(semantic.shape, bool)
                inside[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
                own, foreground = inside & (semantic == index[name]), inside & (semantic != 0)
                # the box says the class: where the segmenter mostly names another one, trust its outline
                out.append((name, own if own.sum() >= 0.5 * foreground.sum() else foreground))
            return out
        return self._sam(image, boxes)

    def regions(self, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Without boxes (embedded segmenter only): each connected region of a job class, an instance."""
        from scipy import ndimage

        semantic = self._semantic(image)
        out = []
        for c in self.classes:
            regions, count = ndimage.label(semantic == _world_index(c))
            out += [(c.name, regions == r) for r in range(1, count + 1)]
        return out

    def _semantic(self, image: np.ndarray) -> np.ndarray:
        """The shipped segmenter's world-class map of ``image`` (64 px in), at the image's size (nearest)."""
        from PIL import Image

        from ..models.segmentation import load_segmenter, segment

        if self._segmenter is None:
            self._segmenter = load_segmenter()
        semantic = segment(self._segmenter, resize_array(image, 64, 64, Image.BICUBIC)[None])[0]
        return resize_array(semantic.astype(np.uint8), *image.shape[:2], Image.NEAREST)

    def _sam(self, image: np.ndarray, boxes: list[tuple[str, Box]]) -> list[tuple[str, np.ndarray]]:
        import torch

        if self._segmenter is None:
            from transformers import SamModel, SamProcessor

            model = SamModel.from_pretrained(self.params.segmenter, use_safetensors=True)
            self._segmenter = (model.eval(), SamProcessor.from_pretrained(self.params.segmenter))
        model, processor = self._segmenter
        inputs = processor(images=image, input_boxes=[[list(box) for _, box in boxes]], return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs, multimask_output=False)
        masks = processor.image_processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"],
                                                             inputs["reshaped_input_sizes"])[0]  # (boxes, 1, H, W)
        return [(name, masks[k, 0].numpy().astype(bool)) for k, (name, _) in enumerate(boxes)]
