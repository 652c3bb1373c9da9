"""A label head and a generator backend from outside the package, named by dotted path."""

import json

import pytest

from engine.errors import SpecError
from engine.job.runner import run_job
from engine.output.storage import Store
from engine.spec import parse_spec

from .conftest import BASE_SPEC

BARS = "tests.fixtures.plugins.bars:BarsBackend"
BRIGHTNESS = "tests.fixtures.plugins.brightness:BrightnessHead"


def plugin_spec(tmp_path, **fields) -> dict:
    return {**BASE_SPEC, "output": f"memory://plugins-{tmp_path.name}", "classes": ["bar", "pole"],
            "lower_bound": 6, "budget": {"max_images": 48, "max_waves": 4},
            "generator": {"name": BARS, "params": {"size": 32}},
            "label_head": {"name": BRIGHTNESS, "params": {"threshold": 100}}, **fields}


def test_a_job_runs_with_a_backend_and_a_head_named_by_dotted_path(tmp_path):
    spec = parse_spec(plugin_spec(tmp_path))
    assert spec.generator.config.size == 32 and spec.label_head.config.threshold == 100  # validated once, typed
    result = run_job(spec, quiet=True)
    assert result.stop_reason == "bounds_met" and result.instances >= 12
    store = Store(spec.output)
    coco = json.loads(store.read_bytes("coco/instances.json"))
    assert [c["name"] for c in coco["categories"]] == ["bar", "pole"]
    assert len(coco["annotations"]) == result.instances and coco["images"]
    job = json.loads(store.read_bytes("job.json"))
    assert job["spec"]["generator"]["name"] == BARS and job["spec"]["label_head"]["name"] == BRIGHTNESS


def test_a_plugins_params_are_checked_with_its_own_model(tmp_path):
    data = plugin_spec(tmp_path)
    data["label_head"]["params"] = {"threshold": 300, "colour": "red"}
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert any(p.startswith("label_head.params.threshold: expected") for p in info.value.problems)
    assert any(p.startswith("label_head.params.colour") for p in info.value.problems)


def test_a_dotted_path_that_does_not_load_lists_the_valid_names(tmp_path):
    with pytest.raises(SpecError, match=r"label_head.name: label head 'tests.fixtures.plugins.nowhere:Head': cannot "
                                        r"load it \(ModuleNotFoundError.*valid names: adapter, attention"):
        parse_spec(plugin_spec(tmp_path, label_head={"name": "tests.fixtures.plugins.nowhere:Head"}))


def test_a_head_that_needs_what_the_plugin_backend_lacks_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"expected a head that generator '.*BarsBackend' can serve \(it offers "
                                        r"nothing\), got 'attention', which needs attention_capture, "
                                        r"diffusers_pipeline, step_callbacks \(offered by 'controlnet' and 'diffusion'\)"):
        parse_spec(plugin_spec(tmp_path, label_head={"name": "attention"}))
