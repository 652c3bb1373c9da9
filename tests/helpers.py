"""Comparing two finished outputs (the dataset a user gets, byte for byte), and free ports."""

import hashlib
import json
import os
import socket

PUBLISHED = ("coco/instances.json", "coco/images", "coco/semantic", "parquet", "README.md", "preview.png")


def dataset_digest(root: str) -> dict[str, str]:
    """sha256 of every published file, by path relative to the output root."""
    digests = {}
    for entry in PUBLISHED:
        path = os.path.join(root, entry)
        files = [path] if os.path.isfile(path) else [
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for file in files:
            with open(file, "rb") as f:
                digests[os.path.relpath(file, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def job_record(root: str) -> dict:
    with open(os.path.join(root, "job.json")) as f:
        job = json.load(f)
    job["spec"].pop("output")
    return job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
