"""The job spec: a pydantic v2 model loaded from YAML or JSON, plus CLI overrides.

Everything a job needs to be reproduced lives here. ``fingerprint()`` hashes the
fields that change the dataset, so resume can refuse a changed spec and say which
fields differ.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Hashable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import SpecError, UserError
from .images import PILLOW_MAX_PIXELS
from .records import MAX_CATEGORIES

__all__ = [
    "ClassSpec", "ImageFormat", "JobSpec", "load_spec", "parse_spec", "apply_overrides", "fingerprint",
    "diff_fingerprinted", "json_schema", "describe_error", "require_ordered", "ADDED_FIELDS", "StrictParams",
]

# Fields that only say where or how fast a job runs: changing them keeps the dataset.
UNFINGERPRINTED = ("name", "output", "storage_options", "resources")
# ...except these ``resources`` fields, which change the bytes. Each is fingerprinted only when
# it differs from its default, so specs written before it existed keep their fingerprint.
FINGERPRINTED_RESOURCES = ("threads_per_actor",)
# Fields added after outputs were made: left out of the fingerprint at their default, so the
# fingerprints of those outputs hold; any other value changes the dataset and is fingerprinted.
ADDED_FIELDS = ("prompts.max_image_pixels", "long_prompts", "image_format", "selection", "prompts.ways",
                "prompts.variants", "prompts.captioner", "prompts.append_classes")


def require_ordered(model: BaseModel, low: str, high: str):
    """For ``model_validator(mode="after")``: fields ``low`` <= ``high``, or the spec's one-line error."""
    if getattr(model, low) > getattr(model, high):
        raise ValueError(f"expected {low} <= {high}, got {low}={getattr(model, low)}, {high}={getattr(model, high)}")
    return model


# The base of the spec's models and of every backend's and head's Params: unknown fields are errors.
# (No docstring: it would become the description of every Params in the JSON schema.)
class StrictParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


_Strict = StrictParams


class ClassSpec(_Strict):
    name: str = Field(min_length=1, description="Category name, as written in COCO and Parquet.")
    synonyms: list[str] = Field(default_factory=list, description="Other words for the class in prompts and references.")
    lower_bound: int | None = Field(default=None, ge=0, description="Instances needed; defaults to the job's lower_bound.")

    @property
    def words(self) -> list[str]:
        return [self.name, *self.synonyms]


class Budget(_Strict):
    max_images: int = Field(ge=1, description="Hard cap on images planned.")
    max_waves: int = Field(default=50, ge=1, description="Hard cap on planning waves.")


class Component(_Strict):
    """A registry entry plus its parameters (validated by the entry's own Params model)."""

    # ``name`` may also be the dotted path of a class ('package.module:ClassName'). The params are
    # validated once, by the class's Params model: ``config`` holds the result, which the backend or
    # head receives (``registry.build_backend``/``build_head``).

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    _registry: str = PrivateAttr(default="")  # "BACKENDS" or "HEADS", set by the JobSpec that holds it
    _config: Any = PrivateAttr(default=None)

    @property
    def component(self) -> type:
        """The registered class (a UserError for an unknown name)."""
        from . import registry

        return getattr(registry, self._registry).get(self.name)

    @property
    def config(self) -> BaseModel:
        """``params`` as the class's ``Params`` model: validated when the spec was checked
        (``parse_spec``), or here at first use for a spec built without that check."""
        if self._config is None:
            self._config = self.component.Params.model_validate(self.params)
        return self._config


class CombinationPrompts(_Strict):
    source: Literal["combinations"]
    max_classes: int = Field(default=2, ge=1, description="Prompts name 1..max_classes classes.")
    template: str = Field(default="a photograph of {objects}", description="'{objects}' becomes 'a X and a Y'.")
    negative_prompt: str = ""

    @field_validator("template")
    @classmethod
    def _has_objects(cls, v: str) -> str:
        if "{objects}" not in v:
            raise ValueError(f"expected a template containing '{{objects}}', got {v!r}")
        return v


class ReferencePrompts(_Strict):
    source: Literal["references"]
    annotations: str = Field(description="COCO instances JSON (path or fsspec URI).")
    images: str | None = Field(default=None, description="Image root; default: the annotations file's folder.")
    captions: str | None = Field(default=None, description="COCO captions JSON, needed for style caption_append.")
    storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for reading the inputs (not fingerprinted). Default: the "
                                  "output's storage_options for inputs on the output's protocol, none for others.")
    style: Literal["generic", "caption_append", "multiway"] = Field(
        default="generic", description="generic (DiffusionEngine), caption_append (Dataset Diffusion) or multiway "
                                       "(Diffusion Synthesis' Multi-way Prompt Generator: see ways, variants).")
    ways: dict[Literal["caption", "caption_classes", "classes"], float] = Field(
        default_factory=lambda: {"caption": 1.0, "caption_classes": 1.0, "classes": 1.0},
        description="multiway: the mix of the base caption, the caption with the image's class names appended, "
                    "and the class names alone (relative weights).")
    variants: int = Field(default=1, ge=1, le=64, description="multiway: K prompt variants per reference, planned as "
                                                              "K items (each image gets its own seed).")
    captioner: str | None = Field(default=None, description="multiway: a transformers image-to-text model (folder "
                                                            "or hub id, e.g. BLIP) for images the captions file lacks.")
    domain: str = Field(default="photograph", description="[domain] of the generic prompt.")
    negative_prompt: str = ""
    max_image_pixels: int = Field(
        default=PILLOW_MAX_PIXELS, ge=1, description="A reference image with more pixels is rejected (a decompression-bomb "
                                              "guard; the default is Pillow's, about 9459 x 9459).")

    @model_validator(mode="after")
    def _captions_for_append(self) -> "ReferencePrompts":
        if self.style == "caption_append" and not self.captions:
            raise ValueError("style 'caption_append' expected a 'captions' file, got none; set prompts.captions")
        if self.style == "multiway" and not (self.captions or self.captioner):
            raise ValueError("style 'multiway' expected a 'captions' file or a 'captioner' model for the base "
                             "captions, got neither; set prompts.captions or prompts.captioner")
        if self.style == "multiway" and (min(self.ways.values(), default=0) < 0 or sum(self.ways.values()) <= 0):
            raise ValueError(f"expected prompts.ways weights >= 0 with a positive sum, got {self.ways}")
        return self


class JsonlPrompts(_Strict):
    source: Literal["jsonl"]
    path: str = Field(description='One JSON object a line: {"prompt": ..., "classes": [...]?, "negative_prompt": ...?}.')
    storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for reading the inputs (not fingerprinted). Default: the "
                                  "output's storage_options for inputs on the output's protocol, none for others.")
    negative_prompt: str = ""
    append_classes: bool = Field(
        default=False, description="Append the line's classes to its prompt, 'prompt; c1 c2' (Dataset Diffusion's "
                                   "class-prompt appending). The attention head's keys come from a separate "
                                   "class-only prompt either way; this changes only what the image is generated from. "
                                   "Off by default, so a caption is used as written: on the embedded model appending "
                                   "changed neither mask mIoU (16.07% vs 16.04%) nor prompt fidelity beyond noise "
                                   "(BENCHMARKS.md, 'Paper fidelity').")


PromptSource = Annotated[Union[CombinationPrompts, ReferencePrompts, JsonlPrompts], Field(discriminator="source")]


class ImageFormat(_Strict):
    format: Literal["png", "jpeg", "webp"] = Field(
        default="png", description="How generated images are stored (masks stay PNG): png is lossless; jpeg and "
                                   "webp make a large job several times smaller.")
    quality: int = Field(default=95, ge=1, le=100, description="jpeg and webp encoder quality; png ignores it.")

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg"}.get(self.format, self.format)


class OutputLayout(_Strict):
    formats: list[Literal["parquet", "coco", "webdataset"]] = Field(
        default_factory=lambda: ["parquet", "coco"],
        description="Layouts of the finished output. parquet (the primary layout, always listed): one shard a "
                    "unit. coco: coco/images/, coco/semantic/ and coco/instances*.json. webdataset: tar shards "
                    "written at finalize. Leaving coco out stores each image once (in Parquet); `dde export` "
                    "makes any layout later.")
    coco_shard_images: int = Field(
        default=200_000, ge=1, description="Above this many images, COCO annotations are written as numbered "
                                           "shard files (instances-00000-of-000NN.json) of whole units, each a "
                                           "valid COCO file, rather than one instances.json.")
    webdataset_shard_bytes: int = Field(default=1_000_000_000, ge=1, description="About this many bytes a tar.")

    @field_validator("formats")
    @classmethod
    def _parquet_listed(cls, v: list[str]) -> list[str]:
        if "parquet" not in v:
            raise ValueError(f"expected 'parquet' among the formats (units commit Parquet shards; the others "
                             f"are made from them), got {v}; add parquet to layout.formats")
        if len(set(v)) != len(v):
            raise ValueError(f"expected each format once, got {v}")
        return v


class ActorPool(_Strict):
    min: int = Field(default=1, ge=1)
    max: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "ActorPool":
        return require_ordered(self, "min", "max")


class Resources(_Strict):
    actors: ActorPool = Field(default_factory=ActorPool)
    num_cpus: float = Field(default=1.0, ge=0, description="Per actor; fractional values share cores.")
    num_gpus: float = Field(default=0.0, ge=0, description="Per actor.")
    unit_timeout_s: float = Field(default=1800.0, gt=0, description="A unit running longer is retried elsewhere.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts per unit before the job fails.")
    startup_timeout_s: float = Field(
        default=600.0, gt=0, description="The job fails if fewer than actors.min actors have started by then "
                                         "(e.g. no node offers num_cpus/num_gpus); time for an autoscaler to add "
                                         "nodes. Until then the wait is shown, with what the cluster offers.")
    threads_per_actor: int = Field(
        default=1, ge=1, description="torch intra-op threads in each actor, whatever num_cpus is. The thread count "
                                     "changes how CPU kernels split their work, hence float rounding and image "
                                     "bytes, so unlike the other resources it is part of the fingerprint.")


class ClipFilter(_Strict):
    """High-quality Image Selection by CLIP (Diffusion Synthesis Eq. 2; ``job/selection.py``)."""

    model: str = Field(description="'embedded:clip' (the shipped shapes CLIP), or a CLIPModel folder or hub id "
                                   "(safetensors).")
    epsilon: float = Field(default=0.8, ge=-1, le=1, description="Keep if cos(reference, generated) > epsilon (Eq. 2).")


class SegmenterFilter(_Strict):
    """High-quality Image Selection by a segmenter's agreement with the labels (``job/selection.py``)."""

    model: str = Field(default="embedded:segmenter", description="'embedded:segmenter' or a transformers "
                                                               "semantic-segmentation folder or hub id.")
    min_miou: float = Field(default=0.5, ge=0, le=1, description="Keep if mIoU(segmenter mask, labels) > min_miou.")
    classes: dict[str, int | str] = Field(default_factory=dict, description="Job class -> the model's label (name "
                                                                            "or id); transformers models only.")


class SelectionSpec(_Strict):
    """The filters of High-quality Image Selection; each one configured must pass."""

    clip: ClipFilter | None = None
    segmenter: SegmenterFilter | None = None


class JobSpec(_Strict):
    name: str = Field(min_length=1)
    output: str = Field(min_length=1, description="Any fsspec URI: a path, file://, s3://, memory://.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec/s3fs options.")
    seed: int = Field(default=0, ge=0)
    classes: list[Union[ClassSpec, str]] = Field(min_length=1, max_length=MAX_CATEGORIES)
    lower_bound: int = Field(default=100, ge=0, description="Instances needed per class unless the class says otherwise.")
    budget: Budget
    unit_size: int = Field(default=64, ge=1, description="Images per unit; a unit is one commit.")
    wave_size: int = Field(default=1024, ge=1, description="Images planned per wave.")
    generator: Component = Field(default_factory=lambda: Component(name="render"))
    label_head: Component = Field(default_factory=lambda: Component(name="ground_truth"))
    prompts: PromptSource = Field(default_factory=lambda: CombinationPrompts(source="combinations"))
    resources: Resources = Field(default_factory=Resources)
    image_format: ImageFormat = Field(default_factory=ImageFormat, description="Generated images' file format.")
    layout: OutputLayout = Field(default_factory=OutputLayout, description="The finished output's layouts.")
    long_prompts: Literal["error", "reject"] = Field(
        default="error", description="A prompt with a class word past the text encoder's token limit (or a class "
                                     "the attention head's class-only prompt cannot hold): 'error' stops the job "
                                     "before anything is written; 'reject' leaves such prompts out of the pool and "
                                     "counts them in status, the card and the report.")

    selection: SelectionSpec | None = Field(
        default=None, description="High-quality Image Selection (Diffusion Synthesis): filters after generation, "
                                  "before commit; a rejected image is recorded with its reason and scores.")

    @field_validator("output")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        """``s3://b/out/`` is ``s3://b/out``: paths under the output are joined with '/', and
        'out//coco' names another S3 key. A filesystem root ('/', 'file:///') keeps its slash."""
        stripped = v.rstrip("/")
        return v if not stripped or stripped.endswith(":") else stripped

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, v: list) -> list[ClassSpec]:
        specs = [ClassSpec(name=c) if isinstance(c, str) else c for c in v]
        seen: dict[str, str] = {}
        for c in specs:
            for word in c.words:
                if word.lower() in seen:
                    raise ValueError(f"expected unique class names and synonyms, got {word!r} twice "
                                     f"(in {seen[word.lower()]!r} and {c.name!r})")
                seen[word.lower()] = c.name
        return specs

    def model_post_init(self, context: Any) -> None:
        self.generator._registry, self.label_head._registry = "BACKENDS", "HEADS"

    @property
    def class_specs(self) -> list[ClassSpec]:
        return self.classes  # normalised to ClassSpec by the validator

    def bound(self, c: ClassSpec) -> int:
        return self.lower_bound if c.lower_bound is None else c.lower_bound

    def bounds(self) -> dict[str, int]:
        return {c.name: self.bound(c) for c in self.class_specs}


# ---------------------------------------------------------------- loading


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"spec file {path!r}: expected a readable YAML or JSON file, got {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise UserError(f"spec file {path!r}: expected UTF-8 text, got a byte it cannot decode at offset {e.start} "
                        f"(a UTF-16 or Latin-1 file?); save it as UTF-8") from None


def _unique_key_loader(text: str):
    """A yaml SafeLoader for ``text`` that notes each key a mapping repeats (``.duplicates``:
    key, first line, line), where PyYAML alone keeps the last value without a word."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.duplicates: list[tuple] = []

        def construct_mapping(self, node, deep=False):
            lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' may be overridden: that is its use
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, Hashable):  # PyYAML's own check below reports it
                    continue
                if key in lines:
                    self.duplicates.append((key, lines[key], line))
                lines.setdefault(key, line)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader(text)


def _parse_mapping(text: str, origin: str) -> dict:
    import yaml  # YAML is a superset of JSON, one parser serves both (and reports duplicate keys with lines)

    if "\t" in text and _is_json(text):
        # JSON holds raw tabs only between tokens (editors indent with them), where YAML refuses
        # them; spaces there mean the same
        text = text.replace("\t", " ")
    loader = _unique_key_loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise UserError(f"spec file {origin!r}: expected valid YAML or JSON, got a parse error: {e}") from e
    finally:
        loader.dispose()
    if loader.duplicates:
        raise SpecError([f"spec file {origin!r}: expected each key once in a mapping, got {key!r} twice (lines "
                         f"{first} and {again}); keep one" for key, first, again in loader.duplicates])
    if not isinstance(data, dict):
        raise UserError(f"spec file {origin!r}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _is_json(text: str) -> bool:
    try:
        json.loads(text.lstrip("\ufeff"))
    except ValueError:
        return False
    return True


def apply_overrides(data: dict, overrides: list[str], flag: str = "--set") -> dict:
    """Apply ``dotted.key=value`` overrides (given with ``flag``); values are parsed as YAML scalars/flows."""
    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: expected dotted.key=value, got no '='")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise UserError(f"{flag} {item!r}: expected {part!r} to be inside a mapping, got {type(node).__name__}")
            node = node.setdefault(part, {})
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
            node[int(parts[-1])] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
        else:
            raise UserError(f"{flag} {item!r}: expected {parts[-1]!r} to be inside a mapping, got {type(node).__name__}")
    return data


def _resolve_paths(data: dict, base_dir: str) -> None:
    """Relative local paths in the prompt source are relative to the spec file."""
    prompts = data.get("prompts")
    if not isinstance(prompts, dict):
        return
    for key in ("annotations", "images", "captions", "path"):
        value = prompts.get(key)
        if isinstance(value, str) and "://" not in value and not os.path.isabs(value):
            prompts[key] = os.path.normpath(os.path.join(base_dir, value))


def describe_error(error: dict) -> str:
    """One pydantic error as 'field: expected ..., got ...'."""
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-")) or "(top level)"
    msg, kind, given = error["msg"], error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"{loc}: unknown field (given {given!r}); remove it or check its spelling"
    if kind == "missing":
        return f"{loc}: required field is missing; add it"
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        msg = "expected " + msg.removeprefix("Input should be ")
    elif not msg.startswith("expected"):
        msg = f"expected a value that satisfies: {msg}"
    if "got" not in msg:
        msg += f", got {given!r}"
    return f"{loc}: {msg}"


# The fields the cross-field checks (``_component_problems``) read: while one of them is invalid
# the checks cannot run; any other invalid field can stand at its default for them.
_CROSS_CHECKED = frozenset({"classes", "lower_bound", "budget", "generator", "label_head"})


def parse_spec(data: dict) -> JobSpec:
    """Validate a mapping into a JobSpec; raise SpecError with one line per problem, all in one report."""
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([describe_error(err) for err in e.errors()] + _problems_beside(data, e)) from None
    problems = _component_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def _problems_beside(data: dict, error: ValidationError) -> list[str]:
    """The cross-field problems of a spec pydantic refused, checked with its invalid fields left
    out (at their defaults), when those are none the checks read."""
    invalid = {err["loc"][0] if err["loc"] else None for err in error.errors()}
    if None in invalid or invalid & _CROSS_CHECKED:
        return []
    try:
        spec = JobSpec.model_validate({k: v for k, v in data.items() if k not in invalid})
    except ValidationError:  # a required field among the invalid ones
        return []
    return _component_problems(spec)


def _component_problems(spec: JobSpec) -> list[str]:
    """Validate generator/head params with the classes' own Params models (kept in ``config``),
    compare what the head needs with what the backend offers, then the classes' own checks."""
    from .registry import BACKENDS, HEADS, is_dotted_path

    problems: list[str] = []
    found: dict[str, type] = {}
    for field, registry in (("generator", BACKENDS), ("label_head", HEADS)):
        component: Component = getattr(spec, field)
        if component.name not in registry and not is_dotted_path(component.name):
            problems.append(f"{field}.name: expected one of {registry.names()}, got {component.name!r} (or the "
                            f"dotted path of a class: 'package.module:ClassName')")
            continue
        try:
            cls = registry.get(component.name)
        except UserError as e:
            problems.append(f"{field}.name: {e}")
            continue
        try:
            component._config = cls.Params.model_validate(component.params)
        except ValidationError as e:
            for err in e.errors():
                err = dict(err, loc=(field, "params", *err["loc"]))
                problems.append(describe_error(err))
            continue
        found[field] = cls
        if field == "generator":
            problems.extend(cls.check_spec(spec))
            problems.extend(_budget_problems(spec, cls.max_instances_per_image(component.config)))
    backend, head = found.get("generator"), found.get("label_head")
    if backend and head:  # a head's own checks may read the backend's params, so only when these hold
        missing = _capability_problems(spec, backend, head)
        check_head = getattr(backend, "check_head", None)  # optional, like check_spec
        problems.extend(missing or [*(check_head(spec, head.needs(spec.label_head.config)) if check_head else []),
                                    *head.check_spec(spec)])
    return problems


def _capability_problems(spec: JobSpec, backend: type, head: type) -> list[str]:
    """What the head needs (``Head.needs``) that the backend does not offer (``Backend.offers``)."""
    from .registry import BACKENDS

    missing = sorted(set(head.needs(spec.label_head.config)) - set(backend.offers))
    if not missing:
        return []
    providers: dict[str, list[str]] = {}  # who offers them -> the missing capabilities they offer
    for m in missing:
        who = " and ".join(repr(n) for n in BACKENDS.names() if m in BACKENDS.get(n).offers) or "no registered backend"
        providers.setdefault(who, []).append(m)
    where = "; ".join(f"{', '.join(caps) + ': ' if len(providers) > 1 else ''}offered by {who}"
                      for who, caps in providers.items())
    return [f"label_head.name: expected a head that generator {spec.generator.name!r} can serve (it offers "
            f"{', '.join(sorted(backend.offers)) or 'nothing'}), got {spec.label_head.name!r}, which needs "
            f"{', '.join(missing)} ({where})"]


def _budget_problems(spec: JobSpec, per_image: int | None) -> list[str]:
    """Bounds that the image budget cannot reach even if every image were full."""
    if per_image is None:
        return []
    capacity = spec.budget.max_images * per_image
    needed = sum(spec.bounds().values())
    if needed <= capacity:
        return []
    return [f"budget.max_images: expected at least {-(-needed // per_image)} images to reach the lower bounds "
            f"({needed} instances at most {per_image} per image), got {spec.budget.max_images}; "
            f"raise budget.max_images or lower the bounds"]


def load_spec(path: str, overrides: list[str] = (), *, max_images: int | None = None,
              seed: int | None = None, output: str | None = None) -> JobSpec:
    """``path`` is a YAML/JSON file, or ``env:VAR`` for a spec carried in an environment
    variable (how ``dde submit`` ships a resolved spec to the cluster)."""
    if path.startswith("env:"):
        text = os.environ.get(path[4:])
        if text is None:
            raise UserError(f"spec {path!r}: expected environment variable {path[4:]} to hold a spec, got none")
        data = _parse_mapping(text, path)
    else:
        data = _parse_mapping(_read_text(path), path)
    data = apply_overrides(data, list(overrides))
    if max_images is not None:
        data.setdefault("budget", {})["max_images"] = max_images
    if seed is not None:
        data["seed"] = seed
    if output is not None:
        data["output"] = output
    if not path.startswith("env:"):
        _resolve_paths(data, os.path.dirname(os.path.abspath(path)))
    return parse_spec(data)


# ---------------------------------------------------------------- fingerprint


def _fingerprinted(spec: JobSpec, *, defaults: bool = False) -> dict:
    """What the fingerprint hashes. ``FINGERPRINTED_RESOURCES`` at their default are left out
    (so old fingerprints hold) unless ``defaults``: for listing differences, where a field
    left out and one at its default are the same value."""
    data = spec.model_dump(mode="json")
    resources = data["resources"]
    for key in UNFINGERPRINTED:
        data.pop(key, None)
    data["prompts"].pop("storage_options", None)  # where inputs are read from, like the output's options
    layout = data.pop("layout")  # only whether units commit coco/ files changes the dataset
    if defaults or "coco" not in layout["formats"]:
        data["layout"] = {"coco": "coco" in layout["formats"]}
    kept = {key: resources[key] for key in FINGERPRINTED_RESOURCES
            if defaults or resources[key] != Resources.model_fields[key].default}
    if kept:
        data["resources"] = kept
    if not defaults:
        _drop_added_defaults(spec, data)
    return data


def _drop_added_defaults(spec: JobSpec, data: dict) -> None:
    for path in ADDED_FIELDS:
        *parents, last = path.split(".")
        model, node = spec, data
        for part in parents:
            model, node = getattr(model, part), node[part]
        field = type(model).model_fields.get(last)
        if field is not None and getattr(model, last) == field.get_default(call_default_factory=True):
            del node[last]


def fingerprint(spec: JobSpec) -> str:
    canonical = json.dumps(_fingerprinted(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out or {prefix: []}
    return {prefix: value}


def diff_fingerprinted(old: JobSpec, new: JobSpec) -> list[str]:
    """Dotted paths of fingerprinted fields that differ, with both values."""
    a, b = _flatten(_fingerprinted(old, defaults=True)), _flatten(_fingerprinted(new, defaults=True))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]


def json_schema() -> dict:
    """The spec's JSON Schema; ``generator`` and ``label_head`` list the registered names, and
    ``x-dde-components`` holds each one's ``params`` schema."""
    from .registry import BACKENDS, HEADS

    schema = JobSpec.model_json_schema()
    components = {}
    for field, registry in (("generator", BACKENDS), ("label_head", HEADS)):
        schema["properties"][field]["description"] = f"One of: {', '.join(registry.names())} (params: x-dde-components)."
        components[field] = {name: registry.get(name).Params.model_json_schema() for name in registry.names()}
    schema["x-dde-components"] = components
    return schema
