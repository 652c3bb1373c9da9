"""Deployment configs parse, have the keys their tools need, and name real modules and commands."""

import importlib
import os
import shlex

import yaml

from .conftest import REPO


def load(path):
    with open(os.path.join(REPO, path)) as f:
        return yaml.safe_load(f)


def assert_real_entrypoint(command: str) -> None:
    """`python -m MODULE ...` must import; `dde CMD ...` must be a CLI command."""
    words = shlex.split(command)
    if words[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(words[2]) is not None, f"no module {words[2]}"
    else:
        from engine.cli import COMMANDS

        assert words[0] == "dde" and words[1] in COMMANDS, command


def test_cluster_launcher_config():
    config = load("ray_cluster.yaml")
    for key in ("cluster_name", "provider", "docker", "head_node_type", "available_node_types",
                "idle_timeout_minutes", "setup_commands", "max_workers"):
        assert key in config, key
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"], "the head is a CPU node"
    gpu = [t for name, t in types.items() if t["resources"].get("GPU")]
    assert gpu and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1, "an autoscaled GPU worker type"
    assert config["docker"]["image"]
    assert any("[gpu]" in c for c in config["setup_commands"])


def test_kuberay_manifests():
    cluster = load("deploy/kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    workers = cluster["spec"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and workers["maxReplicas"] >= workers["minReplicas"]

    job = load("deploy/kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["submitterConfig"]["backoffLimit"] >= 1
    assert "headGroupSpec" in job["spec"]["rayClusterSpec"]
    assert_real_entrypoint(job["spec"]["entrypoint"])


def test_dockerfile_installs_gpu_extra_on_cuda():
    with open(os.path.join(REPO, "deploy/Dockerfile")) as f:
        text = f.read()
    assert text.splitlines()[2].startswith("FROM nvidia/cuda:")
    assert "-e '.[gpu]'" in text and "constraints.txt" in text
    for copied in ("engine", "workers", "jobs"):
        assert f"COPY {copied} {copied}" in text


def test_jobs_entrypoint_runs_the_cli(tmp_path, spec_data):
    import json
    import subprocess
    import sys

    spec_data["budget"]["max_images"] = -5  # invalid on purpose: proves the entrypoint parses the spec
    env = dict(os.environ, DDE_SPEC=json.dumps(spec_data))
    proc = subprocess.run([sys.executable, "-m", "jobs.run_job", "env:DDE_SPEC", "--quiet"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "budget.max_images: expected" in proc.stderr


def test_serve_config_builds_the_real_app(monkeypatch):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    config = load("deploy/serve.yaml")
    ServeDeploySchema.model_validate(config)  # Ray's own schema for `serve deploy` and serveConfigV2
    (app,) = config["applications"]
    module_name, _, builder = app["import_path"].partition(":")
    module = importlib.import_module(module_name)
    monkeypatch.setenv("DDE_API_TOKEN", "t" * 32)
    monkeypatch.setenv("DDE_ALLOWED_OUTPUT_ROOTS", "s3://bucket/dde")
    assert isinstance(getattr(module, builder)(app["args"]), serve.Application)
    deployments = {d.name for d in vars(module).values() if isinstance(d, serve.Deployment)}
    assert {d["name"] for d in app["deployments"]} <= deployments


def test_rayservice_runs_the_serve_config_with_the_api_settings():
    from engine.service.api import load_settings

    service = load("deploy/kuberay/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve_config = load("deploy/serve.yaml")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_config
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert "value" not in env["DDE_API_TOKEN"] and env["DDE_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
        assert env["DDE_API_RAY_ADDRESS"]["value"] == f"http://{service['metadata']['name']}-head-svc:8265"
        roots = env["DDE_ALLOWED_OUTPUT_ROOTS"]["value"]
        assert load_settings({}, {"DDE_API_TOKEN": "t" * 32, "DDE_ALLOWED_OUTPUT_ROOTS": roots}).allowed_output_roots
    ports = {p["name"]: p["containerPort"] for p in groups[0]["template"]["spec"]["containers"][0]["ports"]}
    assert ports["serve"] == serve_config["http_options"]["port"] and ports["dashboard"] == 8265
    gpu = groups[1]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1" and groups[1]["maxReplicas"] >= groups[1]["minReplicas"]


def test_openapi_document_is_checked_in_and_valid():
    import json

    from openapi_spec_validator import validate

    from engine.service.api import openapi_json

    with open(os.path.join(REPO, "deploy/openapi.json")) as f:
        checked_in = f.read()
    assert checked_in == openapi_json(), "regenerate: dde serve --openapi > deploy/openapi.json"
    validate(json.loads(checked_in))
    assert_real_entrypoint("dde serve --openapi")
