import copy
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDE = os.path.join(os.path.dirname(sys.executable), "dde")

BASE_SPEC = {
    "name": "t",
    "output": "",
    "seed": 7,
    "classes": ["circle", "square", "triangle", "star", "ring", "cross"],
    "lower_bound": 20,
    "budget": {"max_images": 120, "max_waves": 6},
    "unit_size": 8,
    "wave_size": 48,
    "generator": {"name": "render", "params": {"size": 32, "max_objects": 3}},
    "label_head": {"name": "ground_truth"},
    "prompts": {"source": "combinations", "max_classes": 2},
    "resources": {"actors": {"min": 1, "max": 2}, "num_cpus": 0.5},
}


@pytest.fixture
def spec_data(tmp_path):
    """A small valid spec (as a dict) writing under tmp_path/out."""
    data = copy.deepcopy(BASE_SPEC)
    data["output"] = str(tmp_path / "out")
    return data


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the in-process integration tests (2 CPUs, like CI)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
