"""The HTTP API: its settings and output checks, then `dde serve` on a real `ray start --head`
cluster, spoken to over loopback HTTP: auth, validation, limits, and a job from submission
through stop and resume to completion, read again after the API itself restarts."""

import base64
import io
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import requests

from engine.errors import UserError
from engine.service.api import allowed_output, load_settings, openapi_schema

from .conftest import BIN, DDE, REPO
from .helpers import free_port

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024


# ---------------------------------------------------------------- settings and outputs (no cluster)


def test_outputs_must_lie_under_an_allowed_root(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir(), elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere)
    roots = (str(root), "s3://bkt/dde")
    assert allowed_output(f"{root}/a/./b//c", roots) == f"{root}/a/b/c"
    assert allowed_output(f"file://{root}/a", roots) == f"{root}/a"
    assert allowed_output("S3://bkt/dde//a/./b", roots) == "s3://bkt/dde/a/b"
    refused = {
        f"{root}/../elsewhere/a": "'..' segments",
        f"{root}/a/../b": "'..' segments",  # even where it would stay inside
        f"{root}/link/a": "allowed roots",  # a symlink out of the root
        str(root): "allowed roots",  # the root itself is not a job's output
        f"{root}-sibling/a": "allowed roots",
        "relative/path": "absolute path",
        "s3://bkt/dde-other/a": "allowed roots",
        "s3://bkt/dde/%2e%2e/a": "%-escapes",
        "gs://bkt/dde/a": "allowed roots",  # another scheme for the same bucket and prefix
        f"memory://{root}/a": "allowed roots",
        f"s3://bkt/dde/a::file://{root}/a": "'::' chaining",
        f"{root}/a\nb": "control characters",
    }
    for output, reason in refused.items():
        with pytest.raises(ValueError, match=reason):
            allowed_output(output, roots)


def test_settings_come_from_the_environment_and_name_their_variables(tmp_path):
    env = {"DDE_API_TOKEN": TOKEN, "DDE_ALLOWED_OUTPUT_ROOTS": f" {tmp_path}/x/ , s3://b/p/"}
    settings = load_settings({"max_body_bytes": 4096}, env)
    assert settings.allowed_output_roots == (f"{tmp_path}/x", "s3://b/p")
    assert settings.max_body_bytes == 4096 and settings.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    from_file = {"DDE_API_TOKEN_FILE": str(token_file), "DDE_ALLOWED_OUTPUT_ROOTS": "/data"}
    assert load_settings({}, from_file).token.get_secret_value() == TOKEN

    problems = [
        ({}, {"DDE_ALLOWED_OUTPUT_ROOTS": "/data"},
         "token (DDE_API_TOKEN or DDE_API_TOKEN_FILE): required field is missing"),
        ({}, {"DDE_API_TOKEN": "short-secret", "DDE_ALLOWED_OUTPUT_ROOTS": "/data"}, "at least 16 characters"),
        ({}, {"DDE_API_TOKEN": TOKEN}, "allowed_output_roots (DDE_ALLOWED_OUTPUT_ROOTS): required field is missing"),
        ({}, {"DDE_API_TOKEN": TOKEN, "DDE_ALLOWED_OUTPUT_ROOTS": " , "},
         "allowed_output_roots (DDE_ALLOWED_OUTPUT_ROOTS): expected at least one root"),
        ({}, {"DDE_API_TOKEN": TOKEN, "DDE_ALLOWED_OUTPUT_ROOTS": "/data/../etc"}, "'..' segments"),
        ({}, {**from_file, "DDE_API_TOKEN": TOKEN}, "got both"),
        ({"token": TOKEN}, from_file, "args.token: expected the token in DDE_API_TOKEN"),
        ({"max_body_bytes": 10}, from_file, "max_body_bytes (DDE_API_MAX_BODY_BYTES): expected greater than"),
    ]
    for args, environ, message in problems:
        with pytest.raises(UserError, match=re.escape(message)) as e:
            load_settings(args, environ)
        assert "short-secret" not in str(e.value) and TOKEN not in str(e.value)



# ---------------------------------------------------------------- the API on Serve


class Api:
    """`dde serve` as a user runs it, joined to the test cluster through RAY_ADDRESS."""

    def __init__(self, address: str, env: dict, root, log_path):
        self.address, self.env, self.root, self.log_path = address, env, root, log_path
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = None

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([DDE, "serve", "--address", self.address, "--port", port], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while not self._healthy():
            assert self.proc.poll() is None and time.time() < deadline, self.log_path.read_text()[-3000:]
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM: `dde serve` deletes its Serve app and exits."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(timeout=60) == 0, self.log_path.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or the proxy still starting
            return False

    def request(self, method: str, path: str, headers=AUTH, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def poll(self, path: str, done, timeout_s: float = 180) -> dict:
        deadline = time.time() + timeout_s
        while not done(body := self.request("GET", path).json()):
            assert time.time() < deadline, body
            time.sleep(1)
        return body


@pytest.fixture(scope="module")
def api(ray_head, tmp_path_factory):
    address, env = ray_head
    root = tmp_path_factory.mktemp("api-root")
    env = dict(env, DDE_API_TOKEN=TOKEN, DDE_ALLOWED_OUTPUT_ROOTS=str(root), DDE_API_MAX_BODY_BYTES=str(MAX_BODY))
    service = Api(address, env, root, tmp_path_factory.mktemp("api-log") / "serve.log")
    service.start()
    yield service
    service.stop()
    # with Serve's detached actors still up, `ray start --block` outlasts its SIGTERM grace
    subprocess.run([f"{BIN}/serve", "shutdown", "-y", "-a", address], env=env, check=True, capture_output=True,
                   timeout=120)


def test_every_route_but_healthz_needs_the_token(api):
    schema = openapi_schema()
    routes = [(method, path.replace("{job_id}", "dde-t-0")) for path, ops in schema["paths"].items()
              for method in ops if path != "/healthz"]
    routes += [("get", "/openapi.json"), ("get", "/docs"), ("get", "/no/such/route")]
    assert len(routes) == 9
    wrong = [{}, {"Authorization": f"Bearer {TOKEN[:-1]}x"}, {"Authorization": f"Basic {TOKEN}"},
             {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}{TOKEN}"}]
    for method, path in routes:
        for headers in wrong:
            response = api.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["detail"].startswith("Authorization: expected 'Bearer <token>'")
    assert api.request("GET", "/healthz", headers={}).json() == {"ok": True}
    assert api.request("GET", "/v1/jobs").status_code == 200
    with open(os.path.join(REPO, "deploy/openapi.json")) as f:
        assert api.request("GET", "/openapi.json").json() == json.load(f)


def test_bad_requests_get_field_errors_and_nothing_is_submitted(api, spec_data, tmp_path):
    def post(body=None):
        response = api.request("POST", "/v1/jobs", data=body if body is not None else json.dumps(spec_data))
        return response.status_code, {e["field"]: e["message"] for e in response.json()["detail"]}

    spec_data["output"] = f"{api.root}/bad"
    spec_data["budget"]["max_images"] = 0
    spec_data["colour"] = "red"
    status, errors = post()
    assert status == 422 and set(errors) == {"budget.max_images", "colour"}
    assert errors["budget.max_images"] == "expected greater than or equal to 1, got 0"
    assert post(b"{not json")[1]["(body)"].startswith("expected a job spec as JSON, got invalid JSON")
    assert post(b"[1, 2]") == (422, {"(body)": "expected a JSON object, got list"})

    spec_data["budget"]["max_images"] = 120
    del spec_data["colour"]
    (api.root / "out").symlink_to(tmp_path)
    for output in (f"{api.root}/../escaped", str(tmp_path / "outside"), f"{api.root}/out/job", f"s3:/{api.root}/job",
                   f"file://{api.root}/x::memory://job", "relative/job"):
        spec_data["output"] = output
        status, errors = post()
        assert status == 403 and list(errors) == ["output"] and errors["output"].startswith("expected"), output
    spec_data["output"] = f"{api.root}/job"
    spec_data["storage_options"] = {"client_kwargs": {"endpoint_url": "http://elsewhere"}}
    status, errors = post()
    assert status == 403 and errors["storage_options"].startswith("expected none")
    del spec_data["storage_options"]
    spec_data["prompts"] = {"source": "jsonl", "path": "s3://refs/p.jsonl", "storage_options": {"secret": "s"}}
    status, errors = post()
    assert status == 403 and errors["prompts.storage_options"].startswith("expected no credentials")
    spec_data["prompts"] = {"source": "combinations"}

    too_big = b" " * (MAX_BODY + 1)
    response = api.request("POST", "/v1/jobs", data=too_big)
    assert response.status_code == 413
    assert response.json()["detail"] == f"body: expected at most {MAX_BODY} bytes, got {MAX_BODY + 1}"
    chunked = api.request("POST", "/v1/jobs", data=iter([b" " * 8192] * 16))  # no Content-Length
    assert chunked.status_code == 413 and "expected at most" in chunked.json()["detail"]

    for job_id in ("dde-t-000000000000", "..", "not-a-dde-id"):
        response = api.request("GET", f"/v1/jobs/{job_id}")
        assert response.status_code == 404
    assert api.request("GET", "/v1/jobs").json() == []
    assert [p.name for p in api.root.iterdir()] == ["out"]  # the symlink: no job wrote anything


def test_a_job_from_submission_to_completion(api, spec_data):
    spec_data["output"] = f"{api.root}/./shapes/"
    created = api.request("POST", "/v1/jobs", json=spec_data)
    assert created.status_code == 201, created.text
    job = created.json()
    job_id, output = job["id"], os.path.realpath(api.root / "shapes")
    assert job == {"id": job_id, "output": output, "outcome": "submitted"} and job_id.startswith("dde-t-")
    assert created.headers["Location"] == f"/v1/jobs/{job_id}"
    again = api.request("POST", "/v1/jobs", json=spec_data)
    assert (again.status_code, again.json()["outcome"]) == (200, "already submitted")

    assert api.request("POST", f"/v1/jobs/{job_id}/stop").json() == {"id": job_id, "stopped": True}
    api.poll(f"/v1/jobs/{job_id}", lambda b: b["state"] == "stopped", timeout_s=60)
    listed = api.request("GET", "/v1/jobs").json()
    assert [(j["id"], j["output"], j["state"]) for j in listed] == [(job_id, output, "stopped")]
    resumed = api.request("POST", f"/v1/jobs/{job_id}/resume")
    assert (resumed.status_code, resumed.json()["outcome"]) == (201, "resubmitted")

    done = api.poll(f"/v1/jobs/{job_id}", lambda b: b["state"] in ("succeeded", "failed")
                    and b["progress"] and b["progress"]["state"] == "finalized")
    assert done["state"] == "succeeded", done["message"]
    progress = done["progress"]
    with open(os.path.join(output, "job.json")) as f:
        record = json.load(f)
    assert progress["stop_reason"] == record["stop_reason"] == "bounds_met"
    assert progress["images"] == record["images"] and progress["units_done"] == len(os.listdir(f"{output}/_commits"))
    assert set(progress["classes"]) == set(spec_data["classes"]) and progress["stuck"] == []
    assert all(c["met"] and c["count"] >= c["lower_bound"] == 20 for c in progress["classes"].values())
    assert progress["rejects"] == 0 and progress["images_per_s"] > 0

    samples = api.request("GET", f"/v1/jobs/{job_id}/samples", params={"n": 3}).json()["samples"]
    assert len(samples) == 3 and [s["image_id"] for s in samples] == [0, 1, 2]
    for sample in samples:
        check_sample(sample, spec_data["classes"])
    assert sum(len(s["annotations"]) for s in samples) > 0
    bad_n = api.request("GET", f"/v1/jobs/{job_id}/samples", params={"n": 0})
    assert bad_n.status_code == 422 and bad_n.json()["detail"][0]["field"] == "query.n"
    assert api.request("POST", f"/v1/jobs/{job_id}/resume").json()["outcome"] == "already submitted"

    api.stop()  # nothing the API answers lives in its memory
    assert not requests.get(f"{api.url}/healthz", timeout=5).ok
    api.start()
    assert api.request("GET", f"/v1/jobs/{job_id}").json() == done
    assert [j["id"] for j in api.request("GET", "/v1/jobs").json()] == [job_id]


def check_sample(sample: dict, classes: list[str]) -> None:
    """A sample is a PNG of its stated size whose masks and boxes agree with each other."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    image = Image.open(io.BytesIO(base64.b64decode(sample["png_base64"])))
    assert image.format == "PNG" and image.size == (sample["width"], sample["height"])
    for ann in sample["annotations"]:
        assert ann["category"] in classes and ann["category_id"] == classes.index(ann["category"]) + 1
        rle = ann["segmentation"]
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_serve_on_another_port_while_a_proxy_runs_says_so(api):
    other = free_port()
    proc = subprocess.run([DDE, "serve", "--address", api.address, "--port", str(other)], env=api.env,
                          capture_output=True, text=True, timeout=120)
    port = api.url.rsplit(":", 1)[1]
    assert proc.returncode == 2 and f"--port: expected Serve's proxy on 127.0.0.1:{other}, got one already running " \
        f"on this cluster on 127.0.0.1:{port}" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
