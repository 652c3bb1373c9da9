"""Finalize: publish the committed files under their final names, merge COCO, clean up.

Idempotent and safe to rerun after a crash at any point: a file is either still in its
attempt's staging folder (moved now) or already at its final name (left alone). Clean-up
removes only attempt folders that no marker lists and that no live driver may still be
writing (``ownership.remove_stale_attempts``); nothing else under the output is deleted.
Memory stays flat whatever the dataset's size: one marker, one staging listing and one COCO
unit at a time; what is kept across units is a few names and counts per unit.
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np

from ..errors import UserError
from ..output.layout import CARD_FILE, JOB_FILE, SPEC_FILE
from ..output.ledger import Ledger, iter_markers, marker_names, not_a_job, recorded_spec
from ..output.ownership import remove_stale_attempts
from ..output.storage import Store
from ..output.views import CocoUnit, coco_categories, write_coco, write_manifest, write_webdataset
from ..records import semantic_dtype
from ..spec import JobSpec, fingerprint

__all__ = ["finalize_job"]


def _read_json(store: Store, rel: str) -> dict:
    return json.loads(store.read_bytes(rel))


def _publish(store: Store, marker: dict) -> list[str]:
    """Move one unit's staged files to their final names (one listing of its staging folder);
    return the committed files found at neither place. Memory: one unit."""
    staging = marker["staging"]
    staged = set(store.find(staging))
    elsewhere = []
    for rel in marker["files"]:
        if f"{staging}/{rel}" not in staged:
            elsewhere.append(rel)  # moved by an earlier or a concurrent finalize, or lost
            continue
        try:
            store.move(f"{staging}/{rel}", rel)
        except FileNotFoundError:  # a concurrent finalize (another driver ending) moved it first
            if not store.exists(rel):
                raise
    present = store.present(elsewhere)
    missing = [rel for rel in elsewhere if rel not in present]
    shard = f"{staging}/{marker['shard']}"
    return missing + ([shard] if shard not in staged else [])


def _head(spec: JobSpec) -> dict:
    return {"info": {"description": f"dde dataset {spec.name}", "version": fingerprint(spec)}, "licenses": [],
            "categories": coco_categories([c.name for c in spec.class_specs])}


class _Tally:
    """Sees each unit's COCO annotations once: images that hold each class, and whether any has a mask."""

    def __init__(self, spec: JobSpec):
        self.names = [c.name for c in spec.class_specs]
        self.images_with = dict.fromkeys(self.names, 0)
        self.masks = False

    def __call__(self, annotations: list[dict]) -> None:
        for _, category_id in {(a["image_id"], a["category_id"]) for a in annotations}:
            self.images_with[self.names[category_id - 1]] += 1
        self.masks = self.masks or any("segmentation" in a for a in annotations)


def _write_layouts(store: Store, spec: JobSpec, units: list[CocoUnit], parquet: list[dict],
                   count: _Tally) -> dict[str, list[dict]]:
    """The COCO and WebDataset layouts the spec lists, and the manifest of all of them
    (``parquet``: the manifest's Parquet entries)."""
    layouts: dict[str, list[dict]] = {"parquet": parquet}
    if "coco" in spec.layout.formats:
        layouts["coco"] = write_coco(store, _head(spec), units, spec.layout.coco_shard_images, on_annotations=count)
    else:
        for unit in units:
            count(unit.load()["annotations"])
    if "webdataset" in spec.layout.formats:
        layouts["webdataset"] = write_webdataset(store, [e["file"] for e in parquet], store,
                                                 spec.layout.webdataset_shard_bytes)
    write_manifest(store, layouts)
    return layouts


def _format(spec: JobSpec) -> str:
    f = spec.image_format
    return "PNG" if f.format == "png" else f"{f.format.upper()}, quality {f.quality}"


def _semantic_line(categories: int) -> str:
    if semantic_dtype(categories) == np.uint8:
        return "(and `coco/semantic/` palette PNGs: 0 background,\n  255 uncertain, else the category id)"
    return "(and `coco/semantic/` 16-bit PNGs: 0 background,\n  65535 uncertain, else the category id)"


def _selection_section(rows: list | None) -> str:
    if rows is None:
        return ""
    lines = "\n".join(f"| {name} | {kept} | {rejected} |" for name, kept, rejected in rows)
    return f"""
## High-quality Image Selection
Instances per class in kept images (they count towards the lower bounds) and in images the
selection rejected (reasons and scores in `dde status` and the report).

| class | kept instances | rejected instances |
|---|---|---|
{lines}
"""


def _coco_lines(coco: list[dict], semantic: str) -> tuple[str, str]:
    """The card's Layout line and Loading lines for the COCO layout (one file or shards)."""
    if len(coco) == 1:
        return (f"- `coco/instances.json` with `coco/images/` {semantic}\n",
                'from pycocotools.coco import COCO; coco = COCO("coco/instances.json")\n'
                'from torchvision.datasets import CocoDetection; ds = CocoDetection("coco/images", "coco/instances.json")\n')
    pattern = coco[0]["file"].replace("-00000-of-", "-*-of-")
    return (f"- `{pattern}`: {len(coco)} COCO files of whole units, each valid on its own (ids unique across\n"
            f"  them; see `manifest.json`), with `coco/images/` {semantic}\n",
            f'import glob; from pycocotools.coco import COCO; shards = [COCO(f) for f in sorted(glob.glob("{pattern}"))]\n')


def _card(spec: JobSpec, stats: dict, masks: bool, layouts: dict[str, list[dict]]) -> str:
    """``masks``: whether any committed image has masks (box-only heads write none). ``layouts``: the manifest."""
    rows = "\n".join(f"| {c} | {s['instances']} | {s['images']} | {s['lower_bound']} | {s['state']} |"
                     for c, s in stats["classes"].items())
    kind = "A detection and segmentation" if masks else ("A detection" if stats["instances"] else "An unlabelled")
    semantic = (_semantic_line(len(spec.class_specs)) if masks else "(boxes only: no masks)" if stats["instances"] else "(no annotations)")
    coco_layout, coco_loading = _coco_lines(layouts["coco"], semantic) if "coco" in layouts else ("", "")
    tars = layouts.get("webdataset", [])
    webdataset_layout = (f"- `webdataset/dde-*.tar`: {len(tars)} tar shard(s), a sample per image (image, `.json` "
                         f"row, `.seg.png` mask)\n" if tars else "")
    webdataset_loading = (f'import webdataset as wds; ds = wds.WebDataset("webdataset/dde-{{000000..{len(tars) - 1:06d}}}.tar")'
                          f'.decode("pil")\n' if tars else "")
    return f"""# {spec.name}

{kind} dataset generated by dde (`{spec.generator.name}` backend,
`{spec.label_head.name}` label head, seed {spec.seed}, spec fingerprint `{fingerprint(spec)}`).

- images: {stats['images']} ({_format(spec)})
- instances: {stats['instances']}
- rejected images: {stats['rejects']}
- stopped because: {stats['stop_reason']}
- stuck classes: {', '.join(stats['stuck']) or 'none'}
- input notes: {'; '.join(stats['notes']) or 'none'}

| class | instances | images | lower bound | status |
|---|---|---|---|---|
{rows}
{_selection_section(stats.get("selection"))}
## Layout
{coco_layout}- `parquet/unit-*.parquet`: one row per image, loads in HF `datasets` and Ray Data
{webdataset_layout}- `manifest.json`: every shard of every layout, with its counts
- `job.json`: the resolved spec, its fingerprint and these statistics
- `preview.png`: sample images with their {"masks, " if masks else ""}boxes and class names
- `report.html`: the job report (samples, instances against lower bounds, throughput, rejects)

## Loading
```python
{coco_loading}import datasets; ds = datasets.load_dataset("parquet", data_files="parquet/*.parquet", split="train")
import ray; ds = ray.data.read_parquet("parquet/")
{webdataset_loading}```
"""


def finalize_job(store: Store, spec: JobSpec, stop: str | None = None, lease: str | None = None) -> dict:
    """Publish, merge and describe what is committed. ``lease``: the finishing driver's own
    lease, whose attempts are over. Raises UserError if committed files are missing
    (``dde resume`` regenerates those units)."""
    if not store.exists(SPEC_FILE):
        raise not_a_job(store.uri)
    names = marker_names(store)  # before any staging listing: see ownership.broken_units
    stagings, units, parquet, missing = set(), [], [], {}
    for marker in iter_markers(store, names):  # per unit: what is kept is a few names and counts
        lost = _publish(store, marker)
        if lost:
            missing[marker["unit_id"]] = lost if len(missing) < 5 else lost[:1]
        stagings.add(marker["staging"])
        units.append(CocoUnit(marker["images"], partial(_read_json, store, f"{marker['staging']}/{marker['shard']}")))
        parquet += [{"file": f, "rows": marker["images"], "instances": marker["counts"]}
                    for f in marker["files"] if f.startswith("parquet/")]
    if missing:
        shown = "; ".join(f"{uid}: {len(files)} file(s), e.g. {files[0]}" for uid, files in list(missing.items())[:5])
        raise UserError(f"output: expected every committed file in storage, got {len(missing)} committed unit(s) "
                        f"with files missing ({shown}); `dde resume {store.uri}` regenerates them with their "
                        f"planned seeds, then finalizes")
    removed, kept = remove_stale_attempts(store, stagings, own_lease=lease)
    tally = _Tally(spec)
    layouts = _write_layouts(store, spec, units, parquet, tally)
    from .status import job_status

    status = job_status(store, Ledger(store))
    stats = {
        "images": status["images"], "instances": status["instances"], "rejects": status["rejects"],
        "stop_reason": stop or ("bounds_met" if all(c["met"] for c in status["classes"].values()) else "incomplete"),
        "stuck": status["stuck"], "notes": status["notes"],
        "classes": {c: {"instances": s["count"], "images": tally.images_with[c], "lower_bound": s["lower_bound"],
                        "state": s["state"]}
                    for c, s in status["classes"].items()},
        **({"selection": status["selection"]} if status["selection"] is not None else {}),
    }
    from .preview import write_preview

    grid = write_preview(store, [e["file"] for e in parquet])
    store.write_bytes(CARD_FILE, _card(spec, stats, tally.masks, layouts).encode())
    job = {"spec": recorded_spec(spec), "fingerprint": fingerprint(spec), **stats,
           "units": status["units_done"]}
    store.write_bytes(JOB_FILE, json.dumps(job, indent=1).encode())
    from .report import write_report

    write_report(store, grid=grid)  # after job.json: the page shows the job as finalized, with its stop reason
    return {**job, "attempts_removed": removed, "attempts_kept": kept}
