"""What the trained box heads (``adapter``, ``grounding``) share: they read a UNet feature
pyramid (``engine.heads.boxes.features.PyramidCapture``, forward hooks on the backend's UNet: any
backend that offers ``diffusers_pipeline`` and ``unet_features``) and run a detector trained by ``dde train adapter`` / ``dde train grounding`` on it. Boxes only:
instances carry no mask.

Two sources of features (param ``features``):

- ``simulated`` (default): Eq. 4 applied to the generated image (encode, noise to t = 1, one
  UNet pass with the empty prompt), exactly what the adapter is trained on. One extra UNet
  pass per image, against 2 x steps for sampling with CFG.
- ``last_step``: the last denoising step's conditional branch, as in the paper. Free, but a
  sampler's last step is not t = 1 (DPM-Solver++ ends at t = 50 at 20 steps, 40 at 25) and it is
  conditioned on the prompt, so the features drift from the training ones. On the embedded
  model both score about the same (``bench/results/labels.md``, ``adapter_last_step``).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from ..backends.base import DIFFUSERS_PIPELINE, STEP_CALLBACKS, UNET_FEATURES, StepObserver, StrictParams
from ..records import Generated, ImageRequest, Instance, Labels
from ..spec import JobSpec
from .base import Head
from .boxes.detector import NMS_IOU

__all__ = ["TrainedHeadParams", "TrainedBoxHead"]


class TrainedHeadParams(StrictParams):
    features: Literal["simulated", "last_step"] = Field(
        default="simulated", description="Eq. 4 on the generated image (as in training), or the last denoising "
                                         "step's conditional branch.")
    weights: str | None = Field(default=None, description="Folder of a trained head (its .safetensors and .json "
                                                          "card). Default: the one shipped for embedded:shapes.")
    threshold: float = Field(default=0.3, ge=0, le=1, description="Keep detections scoring at least this "
                                                                   "(DiffusionEngine's delta; InstaGen's 0.4 "
                                                                   "loses recall here, BENCHMARKS.md).")
    empty_images: Literal["skip", "keep"] = Field(
        default="skip", description="An image with no box: rejected with its reason (skip, as DiffusionEngine's "
                                    "code does: 'No Valid Box, Skip'), or written like any other (keep). On the "
                                    "embedded model 55-100% of such images hold objects the head missed "
                                    "(BENCHMARKS.md, 'Paper fidelity').")
    decoding: Literal["best_class", "topk"] = Field(
        default="best_class", description="Each query's best class (one box per query), or DINO's top 100 "
                                          "(query, class) pairs (a query may box two classes).")


class TrainedBoxHead(Head, StepObserver):
    """Subclasses set ``name`` (the registry and `dde train` name), ``stem`` (weights file stem) and
    ``shipped`` (the folder shipped for the embedded model), and say which class names to ask for."""

    Params = TrainedHeadParams
    requires = frozenset({DIFFUSERS_PIPELINE, UNET_FEATURES})
    name = stem = shipped = ""
    nms_iou = NMS_IOU  # class-wise NMS of the decoded boxes; a head that rescores its queries may lower it

    @classmethod
    def needs(cls, params: TrainedHeadParams) -> frozenset[str]:
        """``last_step`` features are read while the backend samples: that needs its step callbacks."""
        return cls.requires | ({STEP_CALLBACKS} if params.features == "last_step" else set())

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        params = spec.label_head.config
        model = spec.generator.config.model  # diffusers_pipeline: the backend's params name the model
        if params.weights is None and model != "embedded:shapes":
            return [f"label_head.params.weights: expected the folder of a {cls.name} head trained for {model!r} "
                    f"(`dde train {cls.name} --model {model}`), got none (the shipped one is for embedded:shapes)"]
        card = cls.card_path(params)
        if not os.path.exists(card):
            return [f"label_head.params.weights: expected a trained {cls.name} head ({os.path.basename(card)} and its "
                    f".safetensors), got none at {os.path.dirname(card)}; run `dde train {cls.name}`"]
        return cls.check_classes(params, [c.name for c in spec.classes])

    @classmethod
    def check_classes(cls, params, names: list[str]) -> list[str]:
        return []

    @classmethod
    def load_stem(cls, params) -> str:
        """The weights' file stem in the folder."""
        return cls.stem

    @classmethod
    def card_path(cls, params) -> str:
        """The weights' card (``STEM.json`` beside ``STEM.safetensors``)."""
        return os.path.join(params.weights or cls.shipped, f"{cls.load_stem(params)}.json")

    @classmethod
    def load(cls, params):
        from .boxes.weights import load_detector

        return load_detector(params.weights or cls.shipped, cls.load_stem(params), cls.name)

    def attach(self, backend) -> None:
        from .boxes.features import PyramidCapture

        pipe = backend.pipe
        self.detector, self.card = self.load(self.params)
        self.detector.to(pipe.device)
        self.pipe = pipe
        self.capture = PyramidCapture(pipe.unet, pipe.vae_scale_factor)
        self.image_size = backend.size
        self.prepare(pipe)
        if self.params.features == "last_step":
            backend.observers.append(self)

    def prepare(self, pipe) -> None:
        """Once, after loading: whatever the head needs from the pipeline (text embeddings)."""

    # ---- StepObserver (features: last_step)
    def begin_batch(self, pipe, requests: list[ImageRequest], start_steps: list[int], steps: int) -> None:
        self._rows = len(requests)

    def end_batch(self) -> list[dict]:
        pyramid = self.capture.pyramid(rows=slice(-self._rows, None))  # the conditional half of the CFG pair
        return [{self.features_key: {s: level[i] for s, level in pyramid.items()}} for i in range(self._rows)]

    # ---- labelling
    @property
    def features_key(self) -> str:
        """Where each image's pyramid is in ``Generated.extras``: ``features.SIMULATED`` or "last_step_features"."""
        return f"{self.params.features}_features"

    def features(self, requests: list[ImageRequest], generated: list[Generated], todo: list[int]) -> dict:
        """The pyramid of the images ``todo``."""
        import torch

        from .boxes.features import simulated_features

        if self.params.features == "simulated":
            return simulated_features(self.pipe, self.capture, [generated[k] for k in todo], requests[todo[0]].seed)
        return {s: torch.stack([generated[k].extras[self.features_key][s] for k in todo])
                for s in generated[todo[0]].extras[self.features_key]}

    def label(self, requests: list[ImageRequest], generated: list[Generated]) -> list[Labels]:
        import torch

        from .boxes.detector import detections

        todo = [k for k, g in enumerate(generated) if g.image is not None]
        labels = [Labels([]) for _ in generated]
        if not todo:
            return labels
        pyramid = self.features(requests, generated, todo)
        names, text = self.vocabulary()
        with torch.no_grad():
            out = self.rescore(self.detector(pyramid, text), [generated[k].image for k in todo])
            found = detections(out, self.params.threshold, self.image_size, self.nms_iou, decoding=self.params.decoding,
                               named=[n is not None for n in names])
        for k, image in zip(todo, found):
            labels[k] = Labels([Instance(names[c], score=s, box=tuple(box)) for c, s, box in image])
            if self.params.empty_images == "skip" and not labels[k].instances:
                generated[k].reject = (f"{self.name}: no box of the job's classes scored {self.params.threshold} or "
                                       f"more (empty_images: skip)")
        return labels

    def rescore(self, out: dict, images: list) -> dict:
        """The detector's output ({"logits": (B, Q, C), "boxes": (B, Q, 4)}) as the head scores it;
        ``images``: the B generated images, (H, W, 3) uint8. As it is, unless a head says otherwise."""
        return out

    def vocabulary(self) -> tuple[list[str | None], object]:
        """The name of each detector class (None: not a class of this job) and the text input."""
        raise NotImplementedError
