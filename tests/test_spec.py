import json
import subprocess

import pytest
import yaml

from engine.errors import SpecError, UserError
from engine.spec import apply_overrides, diff_fingerprinted, fingerprint, load_spec, parse_spec

from .conftest import DDE, REPO


def problems_of(data) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value.problems


def test_example_specs_load():
    for name in ("shapes-render", "shapes-jsonl", "shapes-references"):
        spec = load_spec(f"{REPO}/jobs/examples/{name}.yaml")
        assert spec.budget.max_images >= 400
    for name in ("shapes-masks", "shapes-boxes", "shapes-open-vocab"):
        assert load_spec(f"{REPO}/jobs/examples/{name}.yaml").label_head.name in ("attention", "adapter", "grounding")
    spec = load_spec(f"{REPO}/jobs/examples/shapes-render.yaml")
    assert spec.bounds()["cross"] == 400 and spec.bounds()["circle"] == 300
    assert spec.class_specs[0].synonyms == ["disc"]


def test_unknown_field_names_its_path(spec_data):
    spec_data["budget"]["max_imagez"] = 3
    (problem,) = problems_of(spec_data)
    assert problem.startswith("budget.max_imagez: unknown field")


def test_every_problem_reported_once_with_expected_and_got(spec_data):
    spec_data["unit_size"] = 0
    spec_data["seed"] = "abc"
    problems = problems_of(spec_data)
    assert len(problems) == 2
    assert any(p.startswith("unit_size: expected") and "got 0" in p for p in problems)
    assert any(p.startswith("seed: expected") and "'abc'" in p for p in problems)


def test_pydantic_and_cross_field_problems_come_in_one_report(spec_data):
    spec_data["unit_size"] = 0  # pydantic's
    spec_data["generator"]["params"]["colour"] = "red"  # the backend's Params
    spec_data["budget"]["max_images"] = 2  # the budget check: 6 classes x 20 at most 3 per image
    problems = problems_of(spec_data)
    assert [p.split(":")[0] for p in problems] == ["unit_size", "generator.params.colour"]
    spec_data["generator"]["params"].pop("colour")
    assert [p.split(":")[0] for p in problems_of(spec_data)] == ["unit_size", "budget.max_images"]


def test_empty_classes_rejected(spec_data):
    spec_data["classes"] = []
    (problem,) = problems_of(spec_data)
    assert problem.startswith("classes:") and "got []" in problem


def test_bounds_above_budget_rejected(spec_data):
    spec_data["lower_bound"] = 1000  # 6 classes x 1000 > 120 images x 3 objects
    (problem,) = problems_of(spec_data)
    assert problem.startswith("budget.max_images: expected at least 2000 images")


def test_unknown_backend_lists_valid_names(spec_data):
    spec_data["generator"]["name"] = "dalle"
    problems = problems_of(spec_data)
    assert any(p.startswith("generator.name: expected one of ['controlnet', 'diffusion', 'render'], got 'dalle'") for p in problems)


def test_backend_params_validated_by_backend(spec_data):
    spec_data["generator"]["params"] = {"size": 8, "colour": "red"}
    problems = problems_of(spec_data)
    assert any(p.startswith("generator.params.size: expected") for p in problems)
    assert any(p.startswith("generator.params.colour: unknown field") for p in problems)


def test_render_needs_world_classes(spec_data):
    spec_data["classes"] = ["circle", {"name": "dog"}, {"name": "puck", "synonyms": ["ring"]}]
    (problem,) = problems_of(spec_data)
    assert problem.startswith("classes.1.name: expected a shapes-world class") and "'dog'" in problem


def test_duplicate_class_names_rejected(spec_data):
    spec_data["classes"] = ["circle", {"name": "puck", "synonyms": ["Circle"]}]
    (problem,) = problems_of(spec_data)
    assert problem.startswith("classes: expected unique class names") and "'Circle' twice" in problem


def test_overrides_parse_types_and_paths(spec_data):
    out = apply_overrides(spec_data, ["budget.max_images=77", "generator.params.size=48", "classes.0=disc"])
    out["generator"]["name"] = "render"
    with pytest.raises(SpecError, match="classes.0.name: expected a shapes-world class"):
        parse_spec(out)
    out["classes"][0] = {"name": "disc", "synonyms": ["circle"]}
    spec = parse_spec(out)
    assert spec.budget.max_images == 77 and spec.generator.params["size"] == 48
    assert spec.class_specs[0].name == "disc"
    with pytest.raises(UserError, match="expected dotted.key=value"):
        apply_overrides(spec_data, ["budget.max_images"])


def test_fingerprint_ignores_where_and_how_fast(spec_data):
    a = parse_spec(spec_data)
    b = parse_spec({**spec_data, "output": "memory://elsewhere", "resources": {"num_cpus": 2}})
    assert fingerprint(a) == fingerprint(b)
    c = parse_spec({**spec_data, "seed": 8})
    assert fingerprint(a) != fingerprint(c)
    assert diff_fingerprinted(a, c) == ["seed: 7 -> 8"]


def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path, spec_data):
    spec_data["budget"]["max_images"] = -1
    spec_data["lower_bound"] = "many"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec_data))
    proc = subprocess.run([DDE, "run", str(path), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "budget.max_images: expected" in proc.stderr and "lower_bound: expected" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_unwritable_output_fails_before_work(tmp_path, spec_data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    spec_data["output"] = str(blocker / "out")  # a path under a regular file cannot be created
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_data))
    proc = subprocess.run([DDE, "run", str(path), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "output: expected a writable location" in proc.stderr


def test_cli_schema_is_json_schema():
    proc = subprocess.run([DDE, "schema"], capture_output=True, text=True, timeout=60, check=True)
    schema = json.loads(proc.stdout)
    assert schema["title"] == "JobSpec" and "budget" in schema["properties"]
    components = schema["x-dde-components"]  # what generator.name and label_head.name may be, and their params
    assert {"render", "diffusion"} <= set(components["generator"]) and "ground_truth" in components["label_head"]
    assert "max_objects" in components["generator"]["render"]["properties"]
    assert "render" in schema["properties"]["generator"]["description"]


FIELD = f"{REPO}/tests/fixtures/field"


def test_duplicate_keys_are_refused_naming_each_key_and_its_lines(tmp_path):
    """Case 16: a copied example left a second 'seed' and 'prompts' further down."""
    with pytest.raises(SpecError) as info:
        load_spec(f"{FIELD}/spec_duplicate_keys.yaml")
    assert info.value.problems == [
        f"spec file '{FIELD}/spec_duplicate_keys.yaml': expected each key once in a mapping, got 'seed' twice "
        f"(lines 5 and 20); keep one",
        f"spec file '{FIELD}/spec_duplicate_keys.yaml': expected each key once in a mapping, got 'prompts' twice "
        f"(lines 13 and 21); keep one"]


@pytest.mark.parametrize("text, key, lines", [
    ('{"name": "a",\n "budget": {"max_images": 3,\n  "max_images": 4}}', "max_images", (2, 3)),  # JSON, nested
    ("name: a\nclasses: [circle]\nbudget: {max_images: 3}\nname: b\n", "name", (1, 4)),
])
def test_duplicate_keys_in_json_and_nested_mappings(tmp_path, text, key, lines):
    path = tmp_path / "spec.json"
    path.write_text(text)
    proc = subprocess.run([DDE, "run", str(path), "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"got {key!r} twice (lines {lines[0]} and {lines[1]})" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_yaml_merge_keys_may_be_overridden():
    """'<<: *base' then a key of its own is YAML's way to override, not a duplicate."""
    from engine.spec import _parse_mapping

    assert _parse_mapping("a: &x {p: 1, q: 1}\nb:\n  <<: *x\n  p: 2\n", "t")["b"] == {"p": 2, "q": 1}


def test_a_utf16_spec_gets_one_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\n", encoding="utf-16")
    with pytest.raises(UserError, match=r"expected UTF-8 text, got a byte it cannot decode at offset 0 .*save it as "
                                        r"UTF-8"):
        load_spec(str(path))


def test_a_spec_with_a_byte_order_mark_and_crlf_loads(tmp_path):
    """Case 15's spec, saved by Notepad: BOM and CRLF line ends."""
    text = open(f"{FIELD}/spec_bom_crlf.yaml", "rb").read()
    assert text.startswith(b"\xef\xbb\xbf") and b"\r\n" in text
    assert load_spec(f"{FIELD}/spec_bom_crlf.yaml").name


@pytest.mark.parametrize("field, value, shown", [
    ("image_format", {"format": "jpeg", "quality": 90}, "image_format.format: 'png' -> 'jpeg'"),
    ("long_prompts", "reject", "long_prompts: 'error' -> 'reject'"),
    ("prompts.max_image_pixels", 1000, "prompts.max_image_pixels: 89478485 -> 1000"),
    ("layout", {"formats": ["parquet"]}, "layout.coco: True -> False"),
    ("prompts.variants", 3, "prompts.variants: 1 -> 3"),
    ("selection", {"segmenter": {"min_miou": 0.4}}, "selection.segmenter.min_miou: '<unset>' -> 0.4"),
])
def test_fields_added_later_keep_old_fingerprints_at_their_default(spec_data, field, value, shown):
    """An output made before a field existed resumes; a value other than the default is another dataset."""
    import hashlib

    spec_data["prompts"] = {"source": "references", "annotations": "refs/instances.json"}
    base = parse_spec(spec_data)
    old = {k: v for k, v in base.model_dump(mode="json").items()
           if k not in ("name", "output", "storage_options", "resources", "image_format", "long_prompts",
                        "layout", "selection")}
    for added in ("max_image_pixels", "storage_options", "ways", "variants", "captioner"):
        del old["prompts"][added]
    assert fingerprint(base) == hashlib.sha256(json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
                                               ).hexdigest()[:16]
    changed = parse_spec(apply_overrides(spec_data, [f"{field}={json.dumps(value)}"]))
    assert fingerprint(changed) != fingerprint(base) and shown in diff_fingerprinted(base, changed)


def test_a_json_spec_indented_with_tabs_loads(tmp_path, spec_data):
    """Valid JSON that YAML alone refuses: tabs as indentation."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_data, indent="\t"))
    assert load_spec(str(path)) == parse_spec(spec_data)
