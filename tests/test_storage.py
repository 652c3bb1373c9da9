"""Outputs on other fsspec filesystems: a real S3 HTTP endpoint (moto server) and memory://.

The runs with kills and outages on S3 are in test_s3_faults.py; the endpoint is conftest's.
"""

import json

import boto3
import fsspec
import pytest

from engine.errors import UserError
from engine.job.runner import run_job
from engine.output.ledger import Ledger
from engine.output.storage import Store
from engine.spec import parse_spec

from .conftest import S3_KEY, S3_SECRET, make_bucket, s3_options
from .helpers import Gate


def test_create_only_on_s3_is_exclusive(s3_endpoint):
    store = Store(f"s3://{make_bucket(s3_endpoint)}/job", s3_options(s3_endpoint))
    assert store.create_only("_commits/unit-000001.json", b"first")
    assert not store.create_only("_commits/unit-000001.json", b"second")
    assert store.read_bytes("_commits/unit-000001.json") == b"first"


def test_create_whose_response_was_lost_is_still_this_calls(s3_endpoint):
    """The PUT lands, its answer is cut, botocore retries and meets its own object (412)."""
    gate = Gate(s3_endpoint)
    bucket = make_bucket(s3_endpoint)
    store = Store(f"s3://{bucket}/job", s3_options(gate.url))
    gate.lose_response(b"if-none-match")
    assert store.create_only("_commits/unit-000002.json", b"mine")
    assert gate.lost == 1, "the gate did not cut the response: the test proved nothing"
    assert not store.create_only("_commits/unit-000002.json", b"a rival attempt")
    assert store.read_bytes("_commits/unit-000002.json") == b"mine"


def test_listings_are_never_stale(s3_endpoint):
    """A marker written by another process shows up in the next listing, exists() and the ledger."""
    bucket = make_bucket(s3_endpoint)
    store = Store(f"s3://{bucket}/job", s3_options(s3_endpoint))
    ledger = Ledger(store)
    marker = {"unit_id": "unit-000000", "index": 0, "wave": 0, "images": 1, "instances": 1, "counts": {},
              "rejects": [], "backend_seconds": 0, "seconds": 0, "committed_at": 0}
    store.create_only("_commits/unit-000000.json", json.dumps(marker).encode())
    assert list(ledger.refresh()) == ["unit-000000"]
    assert store.fs.ls(store.path("_commits"), detail=False)  # a listings cache would keep this one
    other = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_KEY,
                         aws_secret_access_key=S3_SECRET, region_name="us-east-1")  # a worker elsewhere
    other.put_object(Bucket=bucket, Key="job/_commits/unit-000001.json",
                     Body=json.dumps({**marker, "unit_id": "unit-000001", "index": 1}).encode())
    assert len(store.fs.ls(store.path("_commits"), detail=False)) == 2
    assert store.fs.exists(store.path("_commits/unit-000001.json"))
    assert sorted(ledger.refresh()) == ["unit-000000", "unit-000001"]


def test_listings_cache_cannot_be_turned_on():
    with pytest.raises(UserError, match="use_listings_cache: expected false"):
        Store("s3://bucket/job", {"use_listings_cache": True})


def test_s3_retries_back_off_by_default_and_yield_to_the_standard_variables(s3_endpoint, monkeypatch):
    store = Store(f"s3://{make_bucket(s3_endpoint)}/job", s3_options(s3_endpoint))
    retries = store.fs.s3.meta.config.retries
    assert retries["mode"] == "standard" and retries["total_max_attempts"] >= 10
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    assert "retries" not in Store("s3://other/job", {"key": "k", "secret": "s"}).fs.config_kwargs


@pytest.mark.ray
def test_job_on_s3_end_to_end(s3_job):
    spec, result = s3_job
    assert result.stop_reason == "bounds_met"
    store = Store(spec.output, spec.storage_options)
    coco = json.loads(store.read_bytes("coco/instances.json"))
    assert len(coco["images"]) == result.images
    assert len(store.find("coco/images")) == result.images
    assert store.find("_staging") and not any("/coco/images/" in p for p in store.find("_staging"))
    assert store.list_names("parquet") == [n.replace(".json", ".parquet") for n in store.list_names("_commits")]
    assert store.fs.info(store.path("report.html"))["ContentType"].startswith("text/html")


@pytest.mark.ray
def test_no_credential_is_written_to_the_output(s3_job):
    spec, _ = s3_job
    store = Store(spec.output, spec.storage_options)
    files = store.find("")
    assert "_job/spec.json" in files and "job.json" in files and "report.html" in files
    for blob in store.fs.cat([store.path(f) for f in files]).values():
        assert S3_SECRET.encode() not in blob and S3_KEY.encode() not in blob
    recorded = json.loads(store.read_bytes("_job/spec.json"))["spec"]["storage_options"]
    assert recorded == {"client_kwargs": spec.storage_options["client_kwargs"]}  # the endpoint stays


def test_memory_output_runs_in_process(spec_data):
    spec_data.update(output="memory://jobs/shapes", lower_bound=5)
    result = run_job(parse_spec(spec_data), quiet=True)
    fs = fsspec.filesystem("memory")
    coco = json.loads(fs.cat_file("/jobs/shapes/coco/instances.json"))
    assert len(coco["annotations"]) == result.instances and result.stop_reason == "bounds_met"
