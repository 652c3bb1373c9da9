"""Reference datasets: a COCO instances file read, checked, repaired where a rule makes it safe,
and matched to the job's classes, before anything is written under the output.

The rules (README, "Reference datasets"):

- accepted: image and category ids as JSON integers or strings, compared by value: ``1``,
  ``1.0``, ``"1"`` and ``"001"`` are one id (an integer written as text is that integer; other
  strings are ids as written); images are used in id order, numbers first.
- repaired, with a warning: ``\\`` separators in ``file_name`` (Windows exports) read as ``/``,
  and a name that differs from the one file on disk only in case read as that file;
  an image or category listed twice with the same file or name is read once; annotations whose
  image or category is not listed are dropped; images missing on disk are skipped.
- refused (exit 2, nothing written): an id that is neither integer nor string (null, bool, list,
  1.5), an id listed twice with different files or names, an image without a ``file_name``, a job
  class that matches no category (with the closest category names), and a file whose images are
  all missing. A class with a lower bound that no usable image shows is warned about.

Class names match category names by ``classnames.normalise`` (case, ``_``/``-``/space, plural).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import sys
from dataclasses import dataclass, replace

from ..errors import UserError
from ..output.storage import input_options
from ..spec import JobSpec, ReferencePrompts
from .classnames import ClassMatcher, closest

__all__ = ["Reference", "load_references", "id_key", "describe_missing"]

FIELD = "prompts.annotations"


@dataclass(frozen=True)
class Reference:
    id: str                    # the image id as decimal text
    uri: str                   # where the image file is
    classes: tuple[str, ...]   # job class names, one per annotation


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _json_type(value) -> str:
    names = {bool: "a boolean", type(None): "null", list: "a list", dict: "an object", float: "a fraction"}
    return names.get(type(value), type(value).__name__)


def id_key(value, where: str) -> str:
    """An id as decimal text, so ``1``, ``1.0``, ``"1"`` and ``" 001"`` compare equal (an integer
    written as text is that integer); other strings are ids as they are; other JSON values are refused."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+(\.0*)?\s*", value):
        value = int(value.strip().split(".")[0])
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{where}: expected an integer or string id, got {value!r} ({_json_type(value)}); "
                        f"fix the file's ids")
    return str(value)


def _id_order(key: str) -> tuple:
    """Numeric ids in numeric order (as before ids were compared as text), then the others as text."""
    return (0, int(key), "") if re.fullmatch(r"-?\d+", key) else (1, 0, key)


def _entries(coco: dict, key: str) -> list[dict]:
    for i, entry in enumerate(coco[key]):
        if not isinstance(entry, dict):
            raise UserError(f"{FIELD}: {key}[{i}]: expected an object, got {entry!r}")
    return coco[key]


def _unique(coco: dict, key: str, field: str) -> dict[str, str]:
    """id -> ``field`` of the ``key`` list; a repeated id is read once if it agrees, else refused."""
    values: dict[str, str] = {}
    repeats = 0
    for i, entry in enumerate(_entries(coco, key)):
        ident, value = id_key(entry.get("id"), f"{FIELD}: {key}[{i}].id"), entry.get(field)
        if not isinstance(value, str) or not value:
            raise UserError(f"{FIELD}: {key}[{i}].{field}: expected a non-empty string, got {value!r}")
        if ident in values and values[ident] != value:
            raise UserError(f"{FIELD}: {key}[{i}]: expected unique ids, got id {ident!r} for both "
                            f"{values[ident]!r} and {value!r}; annotations cannot tell them apart, give each its "
                            f"own id")
        repeats += ident in values
        values.setdefault(ident, value)
    if repeats:
        warn(f"{FIELD}: {repeats} {key} entr{'y' if repeats == 1 else 'ies'} listed twice with the same id and "
             f"{field}; each is read once")
    return values


def _file_uri(root: str, name: str) -> str:
    if "\\" not in name:
        return posixpath.join(root, name)
    name = posixpath.normpath(name.replace("\\", "/"))  # '..\\x.png' climbs like '../x.png'
    protocol, sep, path = root.rpartition("://")
    return protocol + sep + posixpath.normpath(posixpath.join(path, name))


def _classes_by_image(coco: dict, files: dict[str, str], class_of: dict[str, str | None]) -> dict[str, list[str]]:
    """Job classes annotated on each image; annotations of unlisted images or categories are dropped."""
    classes_of: dict[str, list[str]] = {}
    dropped = {"image_id": [], "category_id": []}
    for i, ann in enumerate(_entries(coco, "annotations")):
        image = id_key(ann.get("image_id"), f"{FIELD}: annotations[{i}].image_id")
        category = id_key(ann.get("category_id"), f"{FIELD}: annotations[{i}].category_id")
        if image not in files:
            dropped["image_id"].append(image)
        elif category not in class_of:
            dropped["category_id"].append(category)
        elif class_of[category] is not None:
            classes_of.setdefault(image, []).append(class_of[category])
    for field, ids in dropped.items():
        if ids:
            what = "images" if field == "image_id" else "categories"
            warn(f"{FIELD}: {len(ids)} annotation(s) name {what} the file does not list ({field} "
                 f"{', '.join(map(repr, sorted(set(ids), key=_id_order)[:3]))}); they are dropped")
    return classes_of


def _match_classes(spec: JobSpec, categories: dict[str, str]) -> dict[str, str | None]:
    """category id -> job class (None: no class). Refuses a class that matches no category."""
    matcher = ClassMatcher(spec.class_specs)
    class_of = {ident: matcher.category(name) for ident, name in categories.items()}
    matched = set(class_of.values())
    unmatched = [c.name for c in spec.class_specs if c.name not in matched]
    if unmatched:
        spare = sorted({name for ident, name in categories.items() if class_of[ident] is None})
        spare = spare or sorted(categories.values())
        hints = {name: closest(name, spare) for name in unmatched}
        listed = "; ".join(f"{name!r} (closest: {', '.join(map(repr, near)) or 'none'})"
                           for name, near in hints.items())
        example = next(((n, near[0]) for n, near in hints.items() if near), (unmatched[0], spare[0]))
        raise UserError(f"classes: expected each class to match a category of {FIELD} by name (ignoring case, "
                        f"'_'/'-'/space and plurals), got {len(unmatched)} that match none: {listed}. Categories "
                        f"no class matches: {', '.join(map(repr, spare[:10]))}. Add the category's name as a synonym, "
                        f"e.g. classes: [{{name: {example[0]}, synonyms: [{example[1]!r}]}}]")
    return class_of


def _on_disk(uris: list[str], storage_options: dict) -> dict[str, str]:
    """Each URI whose file exists -> that file: the same URI, or the one file whose name differs
    only in case (exports made on Windows, whose names ignore case). One listing per folder, not
    one request per file."""
    import fsspec

    folders: dict[str, list[str]] = {}
    for uri in uris:
        folders.setdefault(posixpath.dirname(uri), []).append(uri)
    found: dict[str, str] = {}
    for folder, members in folders.items():
        fs, path = fsspec.core.url_to_fs(folder, **(storage_options if "://" in folder else {}))
        try:
            names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            names = set()
        by_lower: dict[str, list[str]] = {}
        for name in sorted(names):
            by_lower.setdefault(name.lower(), []).append(name)
        for uri in members:
            name = posixpath.basename(uri)
            if name in names:
                found[uri] = uri
            elif len(by_lower.get(name.lower(), [])) == 1:
                found[uri] = posixpath.join(folder, by_lower[name.lower()][0])
    return found


def describe_missing(record: dict | None) -> str | None:
    """One line for status, the card and the report; None when every listed image was there."""
    if not record or not record.get("missing"):
        return None
    return (f"{record['listed'] - record['size']} of the {record['listed']} images listed were missing and skipped "
            f"(e.g. {record['missing'][0]})")


def _keep_present(references: list[Reference], root: str, storage_options: dict, inputs: dict) -> list[Reference]:
    """The references whose files exist; the rest are named and skipped, or refused if none is left.
    Which ones were missing is recorded with the inputs, so a resume plans from the same pool."""
    found = _on_disk([r.uri for r in references], storage_options)
    missing = [r.uri for r in references if r.uri not in found]
    recased = [(uri, on_disk) for uri, on_disk in found.items() if uri != on_disk]
    if len(missing) == len(references):
        raise UserError(f"prompts.images: expected the images that {FIELD} lists under {root!r}, got none of "
                        f"the {len(references)} (e.g. {missing[0]!r}); set prompts.images to the folder their "
                        f"file_name values are relative to")
    if missing:
        warn(f"prompts.images: {len(missing)} of the {len(references)} images listed are missing and are skipped: "
             f"{', '.join(map(repr, missing[:3]))}{', ...' if len(missing) > 3 else ''}")
    if recased:
        warn(f"{FIELD}: {len(recased)} file_name(s) differ from the files on disk only in case (e.g. "
             f"{recased[0][0]!r} is {recased[0][1]!r}); the files on disk are used")
    inputs["prompts.images"] = {"uri": root, "size": len(references) - len(missing), "unit": "images present",
                                "listed": len(references), "missing": missing[:5],
                                "sha256": hashlib.sha256(repr((missing, recased)).encode()).hexdigest()}
    return [replace(r, uri=found[r.uri]) for r in references if r.uri in found]


def _warn_unreachable(spec: JobSpec, references: list[Reference]) -> None:
    """A class no usable image shows can only get stuck; said now, not after the waves it wastes."""
    shown = {name for r in references for name in r.classes}
    lacking = [c.name for c in spec.class_specs if spec.bound(c) > 0 and c.name not in shown]
    if lacking:
        warn(f"classes: no usable image of {FIELD} shows {lacking}: their lower bounds cannot be met from these "
             f"references (the job will report them stuck); add such images, or set their lower_bound to 0")


def load_references(spec: JobSpec, coco: dict, inputs: dict) -> list[Reference]:
    """The usable references of a parsed COCO file, in id order, with their job classes."""
    source: ReferencePrompts = spec.prompts
    if not isinstance(coco, dict):
        raise UserError(f"{FIELD}: expected a COCO object with 'images', 'annotations' and 'categories', got "
                        f"{_json_type(coco)} in {source.annotations!r}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise UserError(f"{FIELD}: expected a COCO file with a {key!r} list, got none in {source.annotations!r}")
    files = _unique(coco, "images", "file_name")
    if not files:
        raise UserError(f"{FIELD}: expected at least one image, got none in {source.annotations!r}")
    class_of = _match_classes(spec, _unique(coco, "categories", "name"))
    classes_of = _classes_by_image(coco, files, class_of)
    windows = [name for name in files.values() if "\\" in name]
    if windows:
        warn(f"{FIELD}: {len(windows)} file_name(s) use Windows '\\' separators (e.g. {windows[0]!r}); read as '/'")
    order = [c.name for c in spec.class_specs]
    root = source.images or posixpath.dirname(source.annotations)
    references = [Reference(ident, _file_uri(root, files[ident]),
                            tuple(sorted(classes_of.get(ident, []), key=order.index)))
                  for ident in sorted(files, key=_id_order)]
    references = _keep_present(references, root, input_options(root, spec), inputs)
    _warn_unreachable(spec, references)
    return references
