"""Prompt sources: each turns the spec's ``prompts:`` into a finite pool of ``PromptItem``.

The planner samples from the pool towards the classes still below their bound, so each
item carries the job classes it names.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
from dataclasses import dataclass

from ..errors import UserError
from ..output.storage import input_options
from ..spec import ClassSpec, CombinationPrompts, JobSpec, JsonlPrompts, ReferencePrompts
from .classnames import ClassMatcher
from .phrases import class_append_prompt, generic_prompt, objects_phrase

__all__ = ["PromptItem", "build_pool", "generic_prompt", "class_append_prompt", "objects_phrase"]


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    classes: tuple[str, ...]  # job class names, with repeats for multiple instances
    negative_prompt: str = ""
    reference_id: str | None = None
    reference_uri: str | None = None


def _unique_in_order(names) -> list[str]:
    return list(dict.fromkeys(names))


def build_pool(spec: JobSpec, inputs: dict | None = None) -> list[PromptItem]:
    """The prompt pool. ``inputs``, if given, receives what each input file was when read:
    {"prompts.<field>": {"uri", "size", "sha256"}}, so a resume can tell that a file changed."""
    source, inputs = spec.prompts, {} if inputs is None else inputs
    if isinstance(source, CombinationPrompts):
        return _combination_pool(spec.class_specs, source)
    if isinstance(source, ReferencePrompts):
        return _reference_pool(spec, source, inputs)
    if isinstance(source, JsonlPrompts):
        return _jsonl_pool(spec, source, inputs)
    raise TypeError(f"unhandled prompt source {type(source).__name__}")


def _read_input(uri: str, field_name: str, expected: str, storage_options: dict, inputs: dict) -> bytes:
    """The bytes of an input file, recorded in ``inputs`` (size and sha256) under its field."""
    import fsspec

    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            data = f.read()
    except FileNotFoundError as e:
        hint = "; inputs on other storage than the output take prompts.storage_options" if storage_options else ""
        raise UserError(f"prompts.{field_name}: expected an existing {expected}, got {uri!r} (not found{hint})") from e
    inputs[f"prompts.{field_name}"] = {"uri": uri, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return data


def _combination_pool(classes: list[ClassSpec], source: CombinationPrompts) -> list[PromptItem]:
    """One item per combination of 1..max_classes classes. The template's ``{objects}`` already
    names them, so Dataset Diffusion's class appending ("; c1 c2") would only repeat the names, and
    the attention head's keys come from a separate class-only prompt anyway: not appended."""
    names = [c.name for c in classes]
    items = []
    for k in range(1, min(source.max_classes, len(names)) + 1):
        for combo in itertools.combinations(names, k):
            prompt = source.template.format(objects=objects_phrase(list(combo)))
            items.append(PromptItem(prompt, combo, source.negative_prompt))
    return items


def _load_json(uri: str, field_name: str, storage_options: dict, inputs: dict) -> dict:
    data = _read_input(uri, field_name, "COCO JSON file", storage_options, inputs)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"prompts.{field_name}: expected valid JSON, got a parse error in {uri!r}: {e}") from e


def _reference_pool(spec: JobSpec, source: ReferencePrompts, inputs: dict) -> list[PromptItem]:
    from .conditions import check_reference_masks, classes_of_unannotated
    from .references import id_key, load_references

    coco = _load_json(source.annotations, "annotations", input_options(source.annotations, spec), inputs)
    references = load_references(spec, coco, inputs)
    check_reference_masks(spec, coco)
    references = classes_of_unannotated(spec, coco, references)  # the Mask Generator's classes of unlabelled ones
    captions: dict[str, str] = {}
    if source.captions:
        coco_captions = _load_json(source.captions, "captions", input_options(source.captions, spec), inputs)
        for i, ann in enumerate(coco_captions.get("annotations", [])):
            image = id_key(ann.get("image_id"), f"prompts.captions: annotations[{i}].image_id")
            if isinstance(ann.get("caption"), str):  # the first caption of an image is its prompt's
                captions.setdefault(image, ann["caption"])
    if source.style == "multiway":
        return _multiway_pool(spec, source, references, captions)
    items = []
    for ref in references:
        unique = _unique_in_order(ref.classes)
        caption = captions.get(ref.id, f"A {source.domain}")
        if not unique:  # an image with no class of the job: 'A photograph.', not 'A photograph, with  in the ...'
            prompt = caption if source.style == "caption_append" else f"A {source.domain}."
        elif source.style == "caption_append":
            prompt = class_append_prompt(caption, unique)
        else:
            prompt = generic_prompt(source.domain, unique)
        items.append(PromptItem(prompt, ref.classes, source.negative_prompt, ref.id, ref.uri))
    return items


def _multiway_pool(spec: JobSpec, source: ReferencePrompts, references, captions: dict[str, str]) -> list[PromptItem]:
    """Diffusion Synthesis' Multi-way Prompt Generator (``multiway``): K items per reference, each the
    caption, the caption with the class names appended, or the class names; references the captions
    file lacks are captioned by ``source.captioner`` when there is one."""
    from .multiway import allot_ways, caption_images

    lacking = [r for r in references if r.id not in captions]
    if lacking and source.captioner:
        captions = {**captions, **caption_images(source.captioner, lacking, spec)}
    items = []
    for n, ref in enumerate(references):
        caption, names = captions.get(ref.id, f"A {source.domain}"), _unique_in_order(ref.classes)
        forms = {"caption": caption, "caption_classes": class_append_prompt(caption, names) if names else caption,
                 "classes": ", ".join(names) or caption}
        items += [PromptItem(forms[way], ref.classes, source.negative_prompt, ref.id, ref.uri)
                  for way in allot_ways(source.ways, source.variants, n)]
    return items


def _jsonl_pool(spec: JobSpec, source: JsonlPrompts, inputs: dict) -> list[PromptItem]:
    matcher = ClassMatcher(spec.class_specs)
    data = _read_input(source.path, "path", "JSONL file", input_options(source.path, spec), inputs)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"prompts.path: expected UTF-8 text, got a UTF-16 file {source.path!r} (it starts with a "
                        f"UTF-16 byte-order mark); save it as UTF-8")
    try:
        lines = data.decode("utf-8-sig").splitlines()  # a byte-order mark (Windows editors) is not part of line 1
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"prompts.path line {line}: expected UTF-8 text, got bytes that do not decode "
                        f"({data[e.start:e.start + 4]!r}) in {source.path!r}; save the file as UTF-8") from None
    items = [_jsonl_item(line, number, matcher, source) for number, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise UserError(f"prompts.path: expected at least one prompt, got an empty file {source.path!r}")
    return items


def _jsonl_item(line: str, number: int, matcher: ClassMatcher, source: JsonlPrompts) -> PromptItem:
    try:
        row = json.loads(line)
        prompt = row["prompt"]
    except (json.JSONDecodeError, KeyError, TypeError):
        prompt = None
    if not isinstance(prompt, str):
        raise UserError(f"prompts.path line {number}: expected a JSON object with a 'prompt' string, "
                        f"got {line[:80]!r}")
    named = row.get("classes")
    negative = row.get("negative_prompt", source.negative_prompt)
    if named is None:
        classes = matcher.in_text(prompt)
        return PromptItem(_appended(prompt, classes, source), classes, negative)
    if not isinstance(named, list) or not all(isinstance(n, str) for n in named):
        raise UserError(f"prompts.path line {number}: expected 'classes' to be a list of class names, got {named!r}")
    unknown = [n for n in named if matcher.category(n) is None]
    if unknown:
        raise UserError(f"prompts.path line {number}: expected classes from the job's classes, got {unknown}")
    classes = tuple(matcher.category(n) for n in named)
    return PromptItem(_appended(prompt, classes, source), classes, negative)


def _appended(prompt: str, classes, source: JsonlPrompts) -> str:
    """``prompts.append_classes``: the line's classes appended as Dataset Diffusion does."""
    return class_append_prompt(prompt, _unique_in_order(classes)) if source.append_classes and classes else prompt
