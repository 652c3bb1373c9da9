"""The generator backend protocol: ``Backend``, the capabilities a backend offers its heads, and
``StepObserver``, through which a head watches a backend sample. See ``engine.registry`` for how
backends are called.

Adding a backend is one file and, for a short name, one line in ``engine/registry.py``::

    class MyBackend(Backend):
        class Params(StrictParams):       # validates generator.params of the spec, once
            size: int = 64
        offers = frozenset({GROUND_TRUTH})   # what heads may rely on (CAPABILITIES)
        def generate(self, requests): ...    # -> one Generated per ImageRequest

A backend of Stable Diffusion's architecture (ControlNet, SDXL) that offers what the
``diffusion`` backend offers serves every head that needs only that; subclassing
``DiffusionBackend`` gives it all of that at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..records import Generated, ImageRequest
from ..spec import ClassSpec, JobSpec, StrictParams

__all__ = ["Backend", "Configurable", "StrictParams", "StepObserver", "TextEncoders", "CAPABILITIES", "DIFFUSERS_PIPELINE",
           "UNET_FEATURES", "ATTENTION_CAPTURE", "STEP_CALLBACKS", "CONDITION_MASKS", "GROUND_TRUTH"]

# ---- capabilities: what a backend offers (``Backend.offers``) and a head needs (``Head.needs``)
DIFFUSERS_PIPELINE = "diffusers_pipeline"
UNET_FEATURES = "unet_features"
ATTENTION_CAPTURE = "attention_capture"
STEP_CALLBACKS = "step_callbacks"
CONDITION_MASKS = "condition_masks"
GROUND_TRUTH = "ground_truth"

CAPABILITIES = {
    DIFFUSERS_PIPELINE: "``backend.pipe`` is a loaded diffusers pipeline of Stable Diffusion's architecture (unet, "
                        "vae, text_encoder, tokenizer, scheduler; SDXL adds text_encoder_2 and tokenizer_2 and added "
                        "UNet conditions: ``models.conditioning`` encodes and calls the UNet for both) and "
                        "``backend.size`` the side of its images; the backend's params name the model in ``model`` "
                        "(``models.resolve_model``)",
    UNET_FEATURES: "the pipeline's UNet may carry forward hooks and be run again on a generated image (a trained "
                   "box head's feature pyramid)",
    ATTENTION_CAPTURE: "the UNet runs through diffusers attention processors that a head may wrap, on batches of "
                       "classifier-free-guidance rows [unconditional..., conditional...]",
    STEP_CALLBACKS: "``backend.observers``: each ``StepObserver`` there is told before and after every sampled "
                    "batch, and what it returns lands in ``Generated.extras``",
    CONDITION_MASKS: "each image is generated from its reference's masks (a ControlNet's segmentation condition), "
                     "which the backend returns as ``Labels`` in ``Generated.extras['condition_masks']``; its "
                     "params hold ``condition`` (``backends.conditions.ConditionParams``)",
    GROUND_TRUTH: "``Generated.ground_truth`` holds exact labels (the render backend draws them)",
}


@dataclass
class TextEncoders:
    """How a backend encodes prompts: its tokenizers (their ``model_max_length`` is the limit),
    what it appends to every prompt, and whether its head builds class-only prompts too."""

    name: str
    tokenizers: list
    suffix: str = ""
    class_prompts: bool = False


class StepObserver:
    """Watches a backend sample (capability ``step_callbacks``). A head that reads the model while
    it samples (attention maps, last-step features) adds itself to ``backend.observers`` in
    ``attach``; the backend calls it around each batch of ``generate``."""

    def begin_batch(self, pipe, requests: list[ImageRequest], start_steps: list[int], steps: int) -> None:
        """Before a batch is sampled. ``pipe``: the backend's pipeline; ``start_steps[i]``: the
        denoising step at which request i enters the batch (0 for txt2img, later for an img2img
        reference); ``steps``: the denoising steps of the schedule."""

    def end_batch(self) -> list[dict]:
        """After the batch: one dict per request, merged into that image's ``Generated.extras``."""
        return []


class Configurable:
    """What backends and heads share: a ``Params`` model that validates their ``params:`` in the spec
    (once: ``spec.generator.config``, ``spec.label_head.config``), and the job's classes."""

    Params: type[StrictParams] = StrictParams

    def __init__(self, *, params: StrictParams, classes: list[ClassSpec]):
        self.params = params
        self.classes = classes


class Backend(Configurable):
    """A generator backend: turns ``ImageRequest``s into ``Generated`` images.

    ``offers`` lists its capabilities (``CAPABILITIES``); the spec check refuses a head that needs
    one it lacks. The attributes below are what heads may read, each under the capability that
    promises it."""

    offers: ClassVar[frozenset[str]] = frozenset()
    batch_size: int | None = None  # images per generate() call; None means the whole unit
    # Computes with torch: the worker then fixes torch's intra-op thread count to
    # resources.threads_per_actor before the backend loads (the bytes depend on it).
    # False only for a backend (and its heads) that never import torch.
    uses_torch: bool = True
    pipe = None  # diffusers_pipeline: the loaded pipeline
    size: int | None = None  # diffusers_pipeline: the side of generated images, in pixels

    def __init__(self, *, params: StrictParams, classes: list[ClassSpec]):
        super().__init__(params=params, classes=classes)
        self.observers: list[StepObserver] = []  # step_callbacks: told around every sampled batch

    @property
    def model_name(self) -> str:
        """What made the images, as the dataset records it (e.g. the model id)."""
        raise NotImplementedError(f"{type(self).__name__}.model_name")

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        """Cross-field problems with this backend in this spec, one message each (its params are
        ``spec.generator.config``)."""
        return []

    @classmethod
    def check_head(cls, spec: JobSpec, needs: frozenset[str]) -> list[str]:
        """Problems with serving a head that needs ``needs`` (capabilities the backend offers)
        under these params: an option, such as a speed option, that breaks one of them."""
        return []

    @classmethod
    def max_instances_per_image(cls, params: StrictParams) -> int | None:
        """An upper bound on instances per image, if the backend knows one (used to reject impossible bounds)."""
        return None

    @classmethod
    def text_encoders(cls, spec: JobSpec) -> TextEncoders | None:
        """``TextEncoders`` for a backend that reads prompts through a tokenizer with a
        limit (loaded in the driver, before generation); None for one that has no such limit."""
        return None

    def generate(self, requests: list[ImageRequest]) -> list[Generated]:
        """One ``Generated`` per request, in order (``reject`` set: no image, with the reason)."""
        raise NotImplementedError(f"{type(self).__name__}.generate")
