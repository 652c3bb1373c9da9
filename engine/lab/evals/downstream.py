"""``dde bench downstream``: the seed papers' downstream tables on the shapes world.

Rendered scenes stand for real data and a rendered val split is the test set; every cell is one
``dde probe`` run (``lab.train.probe``) at the same steps, batch and seed:

- (a) synthetic only against real only at equal image counts, per dde source (DiffusionEngine
  Tab. 1, Dataset Diffusion Tab. 3);
- (b) 10% real plus 1x, 3x and 9x as many images of the best diffusion source (InstaGen Tab. 2,
  DiffusionEngine Tab. 4), mixed by alpha = k / (k + 1), the share of synthetic images in the union;
- (c) alpha in {0, 0.2, 0.4, 0.6, 0.8} over 10% real and 9x synthetic (Diffusion Synthesis Fig. 7);
- (d) semantic segmentation (LR-ASPP, mIoU) from the `attention` head's masks, the render's
  exact masks, real masks, and the `controlnet` backend's condition masks (``condition`` head,
  references from the real set) with and without High-quality Image Selection (Diffusion
  Synthesis; both rows also enter (a) as box sources). Both ControlNet sources get the same
  image budget, which counts the images selection rejects: with selection a source holds fewer,
  better images for the same generation cost.

Sources are dde jobs built from the example specs in ``jobs/examples/`` with only the output,
the image budget and (for img2img) the reference set changed. Writes ``downstream.md`` (tables),
``downstream.json`` and ``downstream.png`` into ``out``; cells already measured (their probe.json
exists) are read back, so a rerun resumes.
"""

from __future__ import annotations

import json
import os

import yaml

from .results import save_result

__all__ = ["Scale", "QUICK", "FULL", "SOURCES", "Cell", "source_spec", "rendered_sets", "run_source", "probe_cell",
           "downstream_benchmark"]

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "jobs", "examples")
SOURCES = {  # the source's name in the tables: its example spec
    "render + ground_truth": "shapes-render.yaml",
    "img2img + adapter": "shapes-boxes.yaml",
    "txt2img + grounding": "shapes-open-vocab.yaml",
    "txt2img + attention": "shapes-masks.yaml",
    "controlnet + condition": "shapes-controlnet.yaml",
    "controlnet + condition, selection": "shapes-controlnet.yaml",
}
WITHOUT_SELECTION = {"controlnet + condition"}  # the example's High-quality Image Selection removed
CLASSES = ["circle", "square", "triangle", "star", "ring", "cross"]


class Scale:
    """``images`` a source, ``val`` test scenes, probe ``steps`` of ``batch``; ``seeds`` per cell and
    ``headline_seeds`` for the cells the issue's targets read ((a)'s real only and best diffusion
    source, (b)'s 10% real alone and with 3x); ``sampling_steps``: the diffusion sources' denoising
    steps (None: the example specs' own)."""

    def __init__(self, images: int, val: int, steps: int, batch: int, seeds: int, headline_seeds: int | None = None,
                 sampling_steps: int | None = None):
        self.images, self.val, self.steps, self.batch, self.seeds = images, val, steps, batch, seeds
        self.headline_seeds, self.sampling_steps = headline_seeds or seeds, sampling_steps


# checks the pipeline end to end in minutes; its numbers are noise
QUICK = Scale(images=48, val=40, steps=20, batch=16, seeds=1, sampling_steps=6)
FULL = Scale(images=2000, val=300, steps=800, batch=32, seeds=1, headline_seeds=2)


def source_spec(name: str, root: str, images: int, real: str, sampling_steps: int | None = None) -> dict:
    """The job spec (a dict) of one source: its example spec with the output, classes, budget,
    sampling steps (when given) and (for reference sources) the real set changed, and selection
    removed where ``WITHOUT_SELECTION`` says."""
    with open(os.path.join(EXAMPLES, SOURCES[name])) as f:
        data = yaml.safe_load(f)
    # bounds no source meets (the render draws at most 4 objects a scene): the image budget ends each job
    data.update(output=os.path.join(root, "sources", _slug(name)), classes=CLASSES,
                lower_bound=images * 4 // len(CLASSES), budget={"max_images": images, "max_waves": 50})
    if name in WITHOUT_SELECTION:
        data.pop("selection", None)
    if sampling_steps and "steps" in data["generator"].get("params", {}):
        data["generator"]["params"]["steps"] = sampling_steps
    if data["prompts"]["source"] == "references":  # img2img from the real set, as the papers expand theirs
        data["prompts"].update(annotations=f"{real}/annotations/instances_train.json", images=f"{real}/images/train",
                               captions=f"{real}/annotations/captions_train.json")
    return data


def run_source(name: str, root: str, images: int, real: str, sampling_steps: int | None = None) -> str:
    """Run (or continue) the dde job of one source; returns its output folder."""
    from ...job.runner import run_job
    from ...spec import parse_spec

    data = source_spec(name, root, images, real, sampling_steps)
    if not os.path.exists(os.path.join(data["output"], "job.json")):
        run_job(parse_spec(data), quiet=True)
    return data["output"]


def _slug(name: str) -> str:
    """A source's name as a folder or cell name: 'controlnet + condition, selection' -> 'controlnet-condition-selection'."""
    return name.replace(" + ", "-").replace(", ", "-")


def probe_cell(root: str, cell: str, out: str, val: str, scale: Scale, seed: int, **options) -> dict:
    """One probe run (``probe.json``'s content) of ``cell`` at ``seed`` on the dde output ``out``,
    read back from ``root/probes/CELL-seedS`` when it has run; ``options``: ProbeRecipe fields and
    ``real``."""
    from ..train.probe import ProbeRecipe, probe

    folder = os.path.join(root, "probes", f"{cell}-seed{seed}")
    if os.path.exists(os.path.join(folder, "probe.json")):
        with open(os.path.join(folder, "probe.json")) as f:
            return json.load(f)
    real = options.pop("real", None)
    recipe = ProbeRecipe(steps=scale.steps, batch=scale.batch, seed=seed, eval_every=scale.steps, **options)
    return probe(out, val, recipe, real=real, folder=folder, device="cpu")


class Cell:
    """One table row: probe ``name`` (``probes/NAME-seedS``) trained on the dde output ``out`` with
    ``options`` (ProbeRecipe fields and ``real``), scored by ``metric``; a ``headline`` cell gets
    ``scale.headline_seeds`` seeds."""

    def __init__(self, table: str, row: str, name: str, out: str, metric: str = "AP", headline: bool = False,
                 **options):
        self.table, self.row, self.name, self.out, self.metric = table, row, name, out, metric
        self.headline, self.options = headline, options

    def seeds(self, scale: Scale) -> range:
        return range(scale.headline_seeds if self.headline else scale.seeds)


def _a_cells(sources: dict, sets: dict) -> list[Cell]:
    anchor = sources["render + ground_truth"]  # any output: alpha 0 trains on real images only
    return [Cell("a", "real only", "a-real", anchor, headline=True, real=sets["real"], alpha=0.0)] + [
        Cell("a", name, f"a-{_slug(name)}", out) for name, out in sources.items()]


def _later_cells(sources: dict, sets: dict, scale: Scale, best: str) -> list[Cell]:
    """(a)'s best diffusion source again with the headline seeds, then (b), (c) and (d)."""
    n, tenth, anchor, real10 = scale.images, max(1, scale.images // 10), sources["render + ground_truth"], sets["real10"]
    cells = [Cell("a", best, f"a-{_slug(best)}", sources[best], headline=True),
             Cell("b", "10% real only", "b-real10", anchor, headline=True, real=real10, alpha=0.0)]
    cells += [Cell("b", f"10% real + {k}x {best}", f"b-{k}x-{_slug(best)}", sources[best], headline=k == 3,
                   real=real10, alpha=k / (k + 1), synthetic_images=min(n, k * tenth)) for k in (1, 3, 9)]
    # alpha 0 draws no synthetic image: (b)'s 10% real only is that run
    cells += [Cell("c", "alpha 0.0", "b-real10", anchor, real=real10, alpha=0.0)]
    cells += [Cell("c", f"alpha {alpha}", f"c-{alpha}-{_slug(best)}", sources[best], real=real10, alpha=alpha,
                   synthetic_images=min(n, 9 * tenth)) for alpha in (0.2, 0.4, 0.6, 0.8)]
    masks = {"real masks": ("d-real", anchor, {"real": sets["real"], "alpha": 0.0}),
             "render + ground_truth": ("d-render", anchor, {}),
             "txt2img + attention": ("d-attention", sources["txt2img + attention"], {})}
    masks.update({name: (f"d-{_slug(name)}", sources[name], {})  # Diffusion Synthesis' masks
                  for name in ("controlnet + condition", "controlnet + condition, selection")})
    cells += [Cell("d", row, name, out, "mIoU", task="segmentation", **options)
              for row, (name, out, options) in masks.items()]
    return cells


def _measure(root: str, cells: list[Cell], val: str, scale: Scale, shard: tuple[int, int]) -> dict:
    """Train this shard's share of the cells' runs (every N-th (cell, seed), from the K-th), wait for
    the other shards' runs, and read them all back: {table: {row: mean, spread, runs}}."""
    k, n = shard
    runs = [(cell, seed) for cell in cells for seed in cell.seeds(scale)]
    for cell, seed in runs[k::n]:
        probe_cell(root, cell.name, cell.out, val, scale, seed, **cell.options)
    _wait_for([os.path.join(root, "probes", f"{cell.name}-seed{seed}", "probe.json") for cell, seed in runs])
    tables: dict = {}
    for cell in cells:
        results = [probe_cell(root, cell.name, cell.out, val, scale, seed) for seed in cell.seeds(scale)]
        values = [r[cell.metric] for r in results]
        tables.setdefault(cell.table, {})[cell.row] = {"mean": sum(values) / len(values), "images": _images(results[0]),
                                                      "spread": max(values) - min(values), "runs": values}
    return tables


def _images(result: dict) -> str:
    """The images a probe trained on: '531 dde', '200 real + 600 dde' (a source can hold fewer
    images than a cell asks for: selection rejects count against its budget)."""
    counts = result.get("images", {})
    parts = ([f"{counts['real']} real"] if counts.get("real") else []) + (
        [f"{counts['synthetic']} dde"] if result.get("alpha", 1) > 0 and counts.get("synthetic") else [])
    return " + ".join(parts)


def _wait_for(paths: list[str], poll_seconds: float = 10.0) -> None:
    """Block until every path exists (another shard writes them)."""
    import time

    while not all(os.path.exists(p) for p in paths):
        time.sleep(poll_seconds)


def _fmt(cell: dict, base: dict | None = None) -> str:
    share = f" ({100 * cell['mean'] / base['mean']:.0f}%)" if base and base["mean"] > 0 else ""
    spread = f" ± {cell['spread'] / 2:.3f}" if len(cell["runs"]) > 1 else ""
    return f"{cell['mean']:.3f}{spread}{share}"


def rendered_sets(root: str, scale: Scale) -> dict[str, str]:
    """The rendered COCO folders under ``root/sets`` (written once): ``val`` (the test set),
    ``real`` (``scale.images`` scenes, the "real" data) and ``real10`` (a tenth of that count),
    all of the default world."""
    from ...world import WorldConfig, export_coco

    sets, tenth = {}, max(1, scale.images // 10)
    for name, count, split, seed in (("val", scale.val, "val", 1), ("real", scale.images, "train", 2),
                                     ("real10", tenth, "train", 3)):
        sets[name] = os.path.join(root, "sets", name)
        if not os.path.exists(os.path.join(sets[name], "annotations", f"instances_{split}.json")):
            export_coco(sets[name], count, split, seed=seed, config=WorldConfig())
    return sets


def downstream_benchmark(root: str, scale: Scale = FULL, shard: tuple[int, int] = (0, 1)) -> dict:
    """Run the tables (module docstring) under ``root``; returns downstream.json's content.
    ``shard`` (K, N): this process trains every N-th probe run from the K-th, so N processes of one
    torch thread each share N cores; shard 0 also writes the sets and runs the sources, which the
    others wait for, and every shard writes the same tables once all runs exist."""
    sets = {name: os.path.join(root, "sets", name) for name in ("val", "real", "real10")}
    outputs = {name: os.path.join(root, "sources", _slug(name)) for name in SOURCES}
    if shard[0] == 0:
        sets = rendered_sets(root, scale)
        outputs = {name: run_source(name, root, scale.images, sets["real"], scale.sampling_steps) for name in SOURCES}
    _wait_for([os.path.join(out, "job.json") for out in outputs.values()])
    a = _measure(root, _a_cells(outputs, sets), sets["val"], scale, shard)["a"]
    best = max((s for s in SOURCES if not s.startswith("render")), key=lambda s: a[s]["mean"])  # on seed 0
    tables = _measure(root, _later_cells(outputs, sets, scale, best), sets["val"], scale, shard)
    a.update(tables.pop("a"))
    result = {"scale": vars(scale), "best_diffusion_source": best, "a": a, **tables}
    _write(root, result)
    return result


def _write(root: str, result: dict) -> None:
    a, b, c, d = result["a"], result["b"], result["c"], result["d"]
    s = result["scale"]
    lines = [f"# Downstream: a from-scratch FCOS / LR-ASPP trained on dde output (shapes world)",
             "", f"{s['images']} images a source, {s['steps']} steps of batch {s['batch']}, {s['seeds']} seed(s) a cell, "
             f"{s['headline_seeds']} for (a)'s real only and best source and (b)'s 10% and 3x "
             f"(± half the seed-to-seed spread), val: {s['val']} rendered scenes. Percentages: of the first row.", "",
             "## (a) synthetic only vs real only, equal counts (box AP)", "", "| train set | AP | images |",
             "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v, a['real only'] if k != 'real only' else None)} | {v.get('images', '')} |"
              for k, v in a.items()]
    lines += ["", f"## (b) 10% real + k x dde ({result['best_diffusion_source']}) (box AP)", "",
              "| train set | AP | images |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v, b['10% real only'] if k != '10% real only' else None)} | {v.get('images', '')} |"
              for k, v in b.items()]
    lines += ["", "## (c) synthetic sampling probability alpha, 10% real + 9x dde (box AP)", "",
              "| alpha | AP | images |", "|---|---|---|"]
    lines += [f"| {k.split()[1]} | {_fmt(v)} | {v.get('images', '')} |" for k, v in c.items()]
    lines += ["", "## (d) semantic segmentation (mIoU)", "", "| masks | mIoU | images |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v, d['real masks'] if k != 'real masks' else None)} | {v.get('images', '')} |"
              for k, v in d.items()]
    save_result(root, "downstream", result, "\n".join(lines) + "\n")
    _plot(root, c)


def _plot(root: str, c: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3), dpi=120)
    alphas = [float(k.split()[1]) for k in c]
    ax.errorbar(alphas, [v["mean"] for v in c.values()], yerr=[v["spread"] / 2 for v in c.values()], marker="o")
    ax.set_xlabel("alpha (synthetic sampling probability)")
    ax.set_ylabel("box AP")
    ax.set_title("(c) 10% real + 9x dde")
    fig.tight_layout()
    fig.savefig(os.path.join(root, "downstream.png"))
    plt.close(fig)
