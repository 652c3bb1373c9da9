"""Outputs on other fsspec filesystems: a real S3 HTTP endpoint (moto server) and memory://."""

import json

import fsspec
import pytest

from engine.runner import run_job
from engine.spec import parse_spec
from engine.storage import Store

from .helpers import free_port


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto in server mode: a real S3 HTTP endpoint on 127.0.0.1 that Ray workers reach too."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_bucket(endpoint, name):
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=name)


def s3_options(endpoint):
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint,
                                                                    "region_name": "us-east-1"}}


def test_create_only_on_s3_is_exclusive(s3_endpoint):
    make_bucket(s3_endpoint, "markers")
    store = Store("s3://markers/job", s3_options(s3_endpoint))
    assert store.create_only("_commits/unit-000001.json", b"first")
    assert not store.create_only("_commits/unit-000001.json", b"second")
    assert store.read_bytes("_commits/unit-000001.json") == b"first"


@pytest.mark.ray
def test_job_on_s3_end_to_end(spec_data, s3_endpoint, ray_local):
    options = s3_options(s3_endpoint)
    make_bucket(s3_endpoint, "datasets")
    spec_data.update(output="s3://datasets/shapes", storage_options=options, lower_bound=10)
    result = run_job(parse_spec(spec_data), quiet=True)
    assert result.stop_reason == "bounds_met"
    store = Store("s3://datasets/shapes", options)
    coco = json.loads(store.read_bytes("coco/instances.json"))
    assert len(coco["images"]) == result.images
    assert len(store.find("coco/images")) == result.images
    assert store.find("_staging") and not any("/coco/images/" in p for p in store.find("_staging"))
    assert store.list_names("parquet") == [n.replace(".json", ".parquet") for n in store.list_names("_commits")]


def test_memory_output_runs_in_process(spec_data):
    spec_data.update(output="memory://jobs/shapes", lower_bound=5)
    result = run_job(parse_spec(spec_data), quiet=True)
    fs = fsspec.filesystem("memory")
    coco = json.loads(fs.cat_file("/jobs/shapes/coco/instances.json"))
    assert len(coco["annotations"]) == result.instances and result.stop_reason == "bounds_met"
