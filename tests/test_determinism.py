"""Image bytes do not depend on `resources`: torch's intra-op thread count is fixed by
`resources.threads_per_actor` (fingerprinted), not by Ray's num_cpus; which actor makes which unit,
how many actors there are and a driver that stops mid-job change nothing.

Why threads matter: torch splits an elementwise kernel (SiLU, GELU) into one chunk per thread,
and a chunk's tail that is not whole SIMD vectors takes the scalar path, which rounds
differently. On the suite's 2-core AVX-512 machine the tiny model's images and attention masks
differ between 1 and 2 threads, so these tests fail when threads follow num_cpus.
"""

import copy
import hashlib
import json

import pytest

from engine.errors import SpecError, UserError
from engine.spec import ADDED_FIELDS, diff_fingerprinted, fingerprint, parse_spec

from .helpers import dataset_digest, download, job_record


class DriverKilled(Exception):
    pass


def masks_spec(spec_data, tiny_model, output, **resources) -> dict:
    """Diffusion + attention head on the tiny model: 2 waves of 2 units of 4 images."""
    data = copy.deepcopy(spec_data)
    data.update(output=str(output), classes=["circle", "square", "triangle"], lower_bound=1000,
                budget={"max_images": 16, "max_waves": 2}, unit_size=4, wave_size=8)
    data["generator"] = {"name": "diffusion", "params": {"model": tiny_model, "steps": 2, "batch_size": 4}}
    data["label_head"] = {"name": "attention", "params": {"min_area": 0.02}}
    data["resources"] = {"actors": {"min": 1, "max": 1}, "num_cpus": 1, **resources}
    return data


def test_fingerprint_has_threads_per_actor_but_no_other_resource(spec_data):
    base = parse_spec(spec_data)
    # specs that leave it at its default keep the fingerprint they had before the field existed
    before = {k: v for k, v in base.model_dump(mode="json").items()
              if k not in ("name", "output", "storage_options", "resources", "layout", *ADDED_FIELDS)}
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    assert fingerprint(base) == hashlib.sha256(canonical).hexdigest()[:16]
    free = parse_spec({**spec_data, "resources": {"num_cpus": 2, "num_gpus": 1, "actors": {"min": 3, "max": 5},
                                                  "unit_timeout_s": 5, "max_attempts": 9, "threads_per_actor": 1}})
    assert fingerprint(free) == fingerprint(base) and diff_fingerprinted(base, free) == []
    threads = parse_spec({**spec_data, "resources": {"num_cpus": 0.5, "threads_per_actor": 4}})
    assert fingerprint(threads) != fingerprint(base)
    assert diff_fingerprinted(base, threads) == ["resources.threads_per_actor: 1 -> 4"]
    assert diff_fingerprinted(threads, free) == ["resources.threads_per_actor: 4 -> 1"]
    with pytest.raises(SpecError, match="resources.threads_per_actor"):
        parse_spec({**spec_data, "resources": {"threads_per_actor": 0}})


def test_actor_threads_follow_threads_per_actor_not_num_cpus(spec_data, tiny_model, ray_local):
    from workers.unit_worker import UnitWorker

    worker = ray_local.remote(UnitWorker)
    plain = parse_spec(masks_spec(spec_data, tiny_model, "unused")).model_dump(mode="json")
    three = parse_spec(masks_spec(spec_data, tiny_model, "unused", threads_per_actor=3)).model_dump(mode="json")
    render = parse_spec(spec_data).model_dump(mode="json")
    # Ray would give these OMP_NUM_THREADS 2 and 1 (1 for num_cpus < 1)
    actors = [worker.options(num_cpus=2).remote(plain), worker.options(num_cpus=0).remote(three)]
    try:
        assert ray_local.get([a.threads.remote() for a in actors], timeout=120) == [1, 3]
    finally:
        for a in actors:
            ray_local.kill(a)
    actor = worker.options(num_cpus=0).remote(render)
    try:  # render needs no torch: its actor does not import it
        assert ray_local.get(actor.threads.remote(), timeout=120) is None
    finally:
        ray_local.kill(actor)


def test_bytes_do_not_depend_on_cpus_actors_or_driver_restarts(spec_data, tiny_model, ray_local, tmp_path,
                                                               monkeypatch):
    import torch

    from engine.job.progress import Progress
    from engine.job.runner import open_job, run_job
    from engine.output.storage import Store

    def run(name, **resources):
        result = run_job(parse_spec(masks_spec(spec_data, tiny_model, tmp_path / name, **resources)), quiet=True)
        assert result.images == 16
        return str(tmp_path / name)

    reference = run("reference")  # 1 actor with 1 CPU
    digest, record = dataset_digest(reference), job_record(reference)
    assert len([f for f in digest if f.startswith("coco/semantic/")]) == 16

    with pytest.raises(UserError, match=r"resources\.threads_per_actor: 1 -> 2"):
        open_job(parse_spec(masks_spec(spec_data, tiny_model, reference, num_cpus=2, threads_per_actor=2)))

    assert dataset_digest(run("two_cpus", num_cpus=2)) == digest

    # two actors, and a driver that dies after its first unit; the next one resumes with other resources
    done = Progress.unit_done

    def die_after_one(self, summary):
        done(self, summary)
        raise DriverKilled

    monkeypatch.setattr(Progress, "unit_done", die_after_one)
    split = parse_spec(masks_spec(spec_data, tiny_model, tmp_path / "split", actors={"min": 2, "max": 2}))
    with pytest.raises(DriverKilled):
        run_job(split, quiet=True)
    monkeypatch.setattr(Progress, "unit_done", done)
    assert not (tmp_path / "split" / "job.json").exists()
    split = run("split", num_cpus=0.5, actors={"min": 2, "max": 2})
    assert dataset_digest(split) == digest and job_record(split)["images"] == record["images"]

    # in the driver's own process (memory:// outputs), whatever torch's thread count was
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = parse_spec(masks_spec(spec_data, tiny_model, f"memory://determinism-{tmp_path.name}"))
        run_job(spec, quiet=True)
    finally:
        torch.set_num_threads(before)
    assert dataset_digest(download(Store(spec.output), tmp_path / "memory")) == digest
