"""The generator backend protocol; see ``engine.registry`` for how backends are called."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from ..records import Generated, ImageRequest
from ..spec import ClassSpec, JobSpec

__all__ = ["Backend", "StrictParams", "TextEncoders"]


class StrictParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class TextEncoders:
    """How a backend encodes prompts: its tokenizers (their ``model_max_length`` is the limit),
    what it appends to every prompt, and whether its head builds class-only prompts too."""

    name: str
    tokenizers: list
    suffix: str = ""
    class_prompts: bool = False


class Backend:
    Params: type[StrictParams] = StrictParams
    batch_size: int | None = None  # images per generate() call; None means the whole unit
    # Computes with torch: the worker then fixes torch's intra-op thread count to
    # resources.threads_per_actor before the backend loads (the bytes depend on it).
    # False only for a backend (and its heads) that never import torch.
    uses_torch: bool = True

    def __init__(self, *, params: StrictParams, classes: list[ClassSpec]):
        self.params = params
        self.classes = classes

    @property
    def model_name(self) -> str:
        raise NotImplementedError

    @classmethod
    def check_spec(cls, spec: JobSpec) -> list[str]:
        """Cross-field problems with this backend in this spec, one message each."""
        return []

    @classmethod
    def max_instances_per_image(cls, params: StrictParams) -> int | None:
        """An upper bound on instances per image, if the backend knows one (used to reject impossible bounds)."""
        return None

    @classmethod
    def text_encoders(cls, spec: JobSpec):
        """``TextEncoders`` for a backend that reads prompts through a tokenizer with a
        limit (loaded in the driver, before generation); None for one that has no such limit."""
        return None

    def generate(self, requests: list[ImageRequest]) -> list[Generated]:
        raise NotImplementedError
