"""Where everything lives under a job's output root, and how ids and seeds are derived."""

from __future__ import annotations

import hashlib

__all__ = [
    "SPEC_FILE", "LEASES_DIR", "PINS_DIR", "PLANS_DIR", "COMMITS_DIR", "STAGING_DIR", "SHARD_FILE", "JOB_FILE", "CARD_FILE",
    "COCO_FILE", "MANIFEST_FILE", "WEBDATASET_DIR", "REPORT_FILE", "unit_id", "plan_file", "marker_file", "image_name", "derive_seed",
    "coco_shard_file", "webdataset_shard_file",
]

SPEC_FILE = "_job/spec.json"        # resolved spec, fingerprint and input digests, written create-only at start
LEASES_DIR = "_job/leases"          # _job/leases/<lease>.json: one per running driver, with a heartbeat
PINS_DIR = "_job/pinned"            # _job/pinned/<unit>.json: references a repaired (un-committed) unit had read
PLANS_DIR = "_plans"                # _plans/wave-000003.json, create-only, one per wave
COMMITS_DIR = "_commits"            # _commits/unit-000123.json, create-only: the only truth
STAGING_DIR = "_staging"            # _staging/unit-000123.<attempt>/... files of one attempt
SHARD_FILE = "_shard.json"          # a unit's COCO shard, inside its staging folder
JOB_FILE = "job.json"               # written by finalize
CARD_FILE = "README.md"             # dataset card, written by finalize
COCO_FILE = "coco/instances.json"   # merged by finalize (coco_shard_file names above coco_shard_images)
MANIFEST_FILE = "manifest.json"     # written by finalize: every shard of every layout, with counts
WEBDATASET_DIR = "webdataset"       # tar shards, when the job lists the webdataset format
REPORT_FILE = "report.html"         # the job report: finalize and `dde report` write it


def unit_id(index: int) -> str:
    return f"unit-{index:06d}"


def plan_file(wave: int) -> str:
    return f"{PLANS_DIR}/wave-{wave:06d}.json"


def marker_file(uid: str) -> str:
    return f"{COMMITS_DIR}/{uid}.json"


def image_name(image_id: int, extension: str = "png") -> str:
    return f"{image_id:012d}.{extension}"


def derive_seed(job_seed: int, image_id: int) -> int:
    """A 63-bit seed per image from the job seed and the image's global id (never its batch index)."""
    digest = hashlib.blake2b(f"{job_seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def coco_shard_file(index: int, total: int) -> str:
    return f"coco/instances-{index:05d}-of-{total:05d}.json"


def webdataset_shard_file(index: int) -> str:
    return f"{WEBDATASET_DIR}/dde-{index:06d}.tar"
