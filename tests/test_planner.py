import numpy as np

from engine.job.planner import Planner, stop_reason, stuck_classes
from engine.job.prompts import PromptItem, build_pool, class_append_prompt, generic_prompt
from engine.spec import parse_spec


def planner_for(spec_data, pool=None):
    spec = parse_spec(spec_data)
    return spec, Planner(spec, pool or build_pool(spec))


def plan(planner, counts, wave=0, stuck=(), planned=0, uses=None, done=(0, 0)):
    uses = np.zeros(len(planner.pool)) if uses is None else uses
    return planner.plan_wave(wave, counts, list(stuck), planned, 0, uses, *done)


def test_plan_is_deterministic_and_ids_unique(spec_data):
    _, planner = planner_for(spec_data)
    a, b = plan(planner, {}), plan(planner, {})
    assert a == b
    ids = [img[0] for unit in a for img in unit["images"]]
    seeds = [img[2] for unit in a for img in unit["images"]]
    assert len(ids) == 48 and len(set(ids)) == 48 and len(set(seeds)) == 48
    assert [u["unit_id"] for u in a] == [f"unit-{i:06d}" for i in range(6)]
    assert all(len(u["images"]) == 8 for u in a)


def test_seeds_depend_on_global_id_not_batch_position(spec_data):
    _, planner = planner_for(spec_data)
    units = plan(planner, {})
    first_in_each = {u["images"][0][2] for u in units}
    assert len(first_in_each) == len(units)


def test_plan_targets_classes_below_bound(spec_data):
    _, planner = planner_for(spec_data)
    counts = {c: 100 for c in ("circle", "square", "triangle", "star", "ring")}  # only cross is short
    units = plan(planner, counts, wave=1, done=(100, 250))
    items = [planner.pool[item] for unit in units for _, item, _ in unit["images"]]
    assert all("cross" in item.classes for item in items)


def test_wave_size_shrinks_to_remaining_deficit(spec_data):
    _, planner = planner_for(spec_data)
    counts = {c: 20 for c in ("circle", "square", "triangle", "star", "ring")}
    counts["cross"] = 18  # 2 short, ~2 instances per image -> about one unit
    units = plan(planner, counts, wave=1, done=(60, 120))
    assert sum(len(u["images"]) for u in units) == 8


def test_budget_caps_the_wave(spec_data):
    _, planner = planner_for(spec_data)
    units = plan(planner, {}, planned=110)
    assert sum(len(u["images"]) for u in units) == 10


def test_uses_spread_items_before_reuse(spec_data):
    spec_data["wave_size"] = 21  # 6 singles + 15 pairs = 21 combination prompts
    _, planner = planner_for(spec_data)
    units = plan(planner, {})
    items = [item for unit in units for _, item, _ in unit["images"]]
    assert sorted(items) == list(range(21))


def test_stuck_after_two_waves_without_growth():
    bounds = {"a": 10, "b": 10}
    history = [{}, {"a": 5, "b": 0}, {"a": 9, "b": 0}]
    assert stuck_classes(history, bounds) == ["b"]
    assert stuck_classes(history[:2], bounds) == []
    history.append({"a": 9, "b": 3})
    assert stuck_classes(history, bounds) == []


def test_stop_reasons(spec_data):
    spec = parse_spec(spec_data)
    full = {c: 20 for c in spec.bounds()}
    assert stop_reason(spec, 0, full, [], 0) == "bounds_met"
    assert stop_reason(spec, 0, {}, [], 120) == "max_images"
    assert stop_reason(spec, 6, {}, [], 0) == "max_waves"
    assert stop_reason(spec, 2, {**full, "ring": 3}, ["ring"], 50) == "stuck"
    assert stop_reason(spec, 2, {**full, "ring": 3}, [], 50) is None


def test_prompt_styles():
    assert generic_prompt("photo", ["circle", "star"]) == "A photo, with circle, star in the photo."
    assert class_append_prompt("a red circle on a plain background.", ["circle"]) == \
        "a red circle on a plain background; circle"


def test_combination_prompts(spec_data):
    spec_data["prompts"] = {"source": "combinations", "max_classes": 2, "template": "a photo of {objects}"}
    pool = build_pool(parse_spec(spec_data))
    assert len(pool) == 6 + 15
    assert PromptItem("a photo of a circle and a square", ("circle", "square")) in pool


def test_jsonl_prompts_find_classes_and_synonyms(tmp_path, spec_data):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "two discs and a star"}\n\n{"prompt": "boxes", "classes": ["square"]}\n')
    spec_data["classes"][0] = {"name": "circle", "synonyms": ["disc"]}
    spec_data["prompts"] = {"source": "jsonl", "path": str(path)}
    pool = build_pool(parse_spec(spec_data))
    assert [p.classes for p in pool] == [("circle", "star"), ("square",)]


def test_reference_pool_from_exported_world(tmp_path, spec_data):
    import subprocess

    from .conftest import DDE

    proc = subprocess.run([DDE, "world", "export", "--out", str(tmp_path / "w"), "--images", "5", "--split", "val"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    annotations = tmp_path / "w" / "annotations" / "instances_val.json"
    spec_data["prompts"] = {"source": "references", "annotations": str(annotations),
                            "images": str(tmp_path / "w" / "images" / "val"),
                            "captions": str(tmp_path / "w" / "annotations" / "captions_val.json"),
                            "style": "caption_append"}
    pool = build_pool(parse_spec(spec_data))
    assert [p.reference_id for p in pool] == ["1", "2", "3", "4", "5"]
    assert all((tmp_path / "w" / "images" / "val" / f"{int(p.reference_id):012d}.png").exists() for p in pool)
    first = pool[0]
    assert first.prompt.endswith("; " + " ".join(dict.fromkeys(first.classes)))
    assert " on " in first.prompt.split(";")[0]  # the world's caption comes first
    spec_data["prompts"]["style"] = "generic"
    assert build_pool(parse_spec(spec_data))[0].prompt.startswith("A photograph, with ")
