"""Storage settings that follow the job: commands that open an output by URI, and inputs
read with options that fit their own URI (issue 17, cases 20 and 35)."""

import copy
import functools
import http.server
import json
import threading
import time

import boto3
import pytest

from engine.cli import main
from engine.job.prompts import build_pool
from engine.output.ledger import recorded_spec
from engine.output.storage import input_options
from engine.spec import fingerprint, parse_spec

from .conftest import BASE_SPEC, S3_KEY, S3_SECRET, make_bucket, s3_options

_AWS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION")


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """No AWS_* variable and no AWS config files: only what a command is given."""
    for name in _AWS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def _dde(capsys, *argv) -> tuple[int, str, str, float]:
    start = time.monotonic()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err, time.monotonic() - start


@pytest.mark.ray
def test_status_without_credentials_says_what_is_missing_in_one_line(s3_job, no_aws, capsys):
    spec, _ = s3_job
    rc, out, err, took = _dde(capsys, "status", spec.output)
    assert rc == 2 and took < 15, (err, took)
    assert err.count("\n") == 1 and "no credentials" in err and "--storage-option key=" in err, err


@pytest.mark.ray
def test_status_with_keys_but_no_endpoint_fails_fast_naming_the_endpoint_option(s3_job, no_aws, capsys):
    spec, _ = s3_job
    no_aws.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    # the endpoint is only in the recorded spec, which needs it to be read: AWS's own is asked
    # (unreachable offline, access denied online), and the line names the option to set
    rc, _, err, took = _dde(capsys, "status", spec.output)
    assert rc == 2 and took < 20 and err.count("\n") == 1 and "client_kwargs.endpoint_url" in err, (err, took)
    no_aws.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a named endpoint that is down: an outage
    rc, _, err, took = _dde(capsys, "status", spec.output)
    assert rc == 75 and took < 20 and err.count("\n") == 1 and "unreachable" in err, (err, took)


@pytest.mark.ray
def test_commands_take_storage_options_and_the_recorded_endpoint(s3_job, no_aws, capsys):
    spec, result = s3_job
    endpoint = spec.storage_options["client_kwargs"]["endpoint_url"]
    keys = ["--storage-option", f"key={S3_KEY}", "--storage-option", f"secret={S3_SECRET}"]
    # the first read needs the endpoint: given as a dotted option, the recorded one fills the region
    rc, out, err, _ = _dde(capsys, "status", spec.output, "--json", *keys,
                           "--storage-option", f"client_kwargs.endpoint_url={endpoint}")
    assert rc == 0 and json.loads(out)["images"] == result.images, err
    # or from the standard variable, with the keys as flags (the recorded spec keeps none)
    no_aws.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    rc, out, err, _ = _dde(capsys, "resume", spec.output, "--quiet", *keys)
    assert rc == 0 and f"{result.images} images" in out, err
    rc, out, err, _ = _dde(capsys, "finalize", spec.output, *keys)
    assert rc == 0 and out.startswith(f"finalized {spec.output}"), err


def test_a_malformed_storage_option_is_one_line(capsys):
    rc, _, err, _ = _dde(capsys, "status", "s3://bucket/job", "--storage-option", "endpoint")
    assert rc == 2 and err == "error: --storage-option 'endpoint': expected dotted.key=value, got no '='\n"


# ---------------------------------------------------------------- inputs


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server over tmp_path/www (a dataset mirror)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


_COCO = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
         "categories": [{"id": 1, "name": "circle"}]}


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


_PNG = _png()


def _reference_spec(annotations: str, output_options: dict, **prompts) -> object:
    data = copy.deepcopy(BASE_SPEC)
    data.update(output="s3://out-bucket/job", storage_options=output_options, lower_bound=1, classes=["circle"],
                generator={"name": "render", "params": {"size": 32, "max_objects": 3}},
                prompts={"source": "references", "annotations": annotations, **prompts})
    return parse_spec(data)


def test_http_references_with_an_s3_output_get_no_s3_options(s3_endpoint, http_root):
    root, url = http_root
    (root / "instances.json").write_text(json.dumps(_COCO))
    (root / "a.png").write_bytes(_PNG)
    spec = _reference_spec(f"{url}/instances.json", s3_options(s3_endpoint))
    assert input_options(f"{url}/a.png", spec) == {}
    items = build_pool(spec)  # aiohttp was handed the s3 endpoint: TypeError
    assert [i.reference_uri for i in items] == [f"{url}/a.png"]


def test_references_on_another_endpoint_use_prompts_storage_options(s3_endpoint):
    bucket = make_bucket(s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                          region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="refs/instances.json", Body=json.dumps(_COCO).encode())
    client.put_object(Bucket=bucket, Key="refs/a.png", Body=_PNG)
    annotations = f"s3://{bucket}/refs/instances.json"
    elsewhere = dict(s3_options("http://127.0.0.1:9"))  # the output's endpoint holds no references
    spec = _reference_spec(annotations, elsewhere, storage_options=s3_options(s3_endpoint))
    assert build_pool(spec)[0].reference_uri == f"s3://{bucket}/refs/a.png"
    # without prompts.storage_options an input on the output's protocol gets the output's options
    assert input_options(annotations, _reference_spec(annotations, elsewhere)) == elsewhere


def test_input_options_are_neither_fingerprinted_nor_recorded_with_credentials(s3_endpoint):
    plain = _reference_spec("s3://refs/instances.json", {})
    given = _reference_spec("s3://refs/instances.json", {}, storage_options=s3_options(s3_endpoint))
    assert fingerprint(plain) == fingerprint(given)
    recorded = json.dumps(recorded_spec(given))
    assert S3_KEY not in recorded and S3_SECRET not in recorded and s3_endpoint in recorded


def test_long_storage_retries_say_so(capsys):
    import logging

    from engine.output.storage import report_retries

    report_retries()
    logger = logging.getLogger("botocore.endpoint")
    logger.debug("Sending http request: %s", "GET /")
    logger.debug("Response received to retry, sleeping for %s seconds", 0.4)  # routine: silent
    logger.debug("Response received to retry, sleeping for %s seconds", 7.9)
    assert capsys.readouterr().err == "storage: no answer from the endpoint, retrying in 8s\n"


def test_only_a_storage_clients_connection_error_is_a_storage_outage():
    from botocore.exceptions import EndpointConnectionError

    from engine.output.storage import unreachable

    assert not unreachable(RuntimeError("unit failed 3 times"))
    try:
        raise RuntimeError("unit-000001 failed 3 times") from EndpointConnectionError(endpoint_url="http://s3")
    except RuntimeError as e:
        assert unreachable(e)
    assert not unreachable(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))  # exit 2, not 75
