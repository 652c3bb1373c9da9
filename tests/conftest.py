import contextlib
import copy
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from .helpers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
DDE = os.path.join(BIN, "dde")

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


# moto accepts any credentials: these must never appear in an output or in what dde prints.
S3_KEY, S3_SECRET = "AKIADDETESTKEY0000", "dde-test-secret-7Qx9vL2"


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto in server mode: a real S3 HTTP endpoint on 127.0.0.1 that Ray workers and subprocesses reach too."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_bucket(endpoint: str) -> str:
    """A new bucket, so tests sharing the session's endpoint never see each other's objects."""
    import boto3

    name = f"dde-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                 region_name="us-east-1").create_bucket(Bucket=name)
    return name


def s3_options(endpoint: str) -> dict:
    """The spec's way to reach the endpoint: storage_options."""
    return {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": endpoint,
                                                                  "region_name": "us-east-1"}}


def s3_env(endpoint: str, **extra: str) -> dict:
    """The other way: the standard AWS variables, for dde subprocesses (and their Ray workers)."""
    return {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint, **extra}


@pytest.fixture(scope="session")
def s3_job(s3_endpoint, ray_local):
    """One finalized job on S3 with credentials in its storage_options, run once for the session."""
    from engine.job.runner import run_job
    from engine.spec import parse_spec

    data = copy.deepcopy(BASE_SPEC)
    data.update(output=f"s3://{make_bucket(s3_endpoint)}/shapes", storage_options=s3_options(s3_endpoint),
                lower_bound=10)
    spec = parse_spec(data)
    return spec, run_job(spec, quiet=True)
def dashboard_up(address: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{address}/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True  # 401: up, and asking for the cluster's token
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_head():
    """A real `ray start --head` cluster on 127.0.0.1 with token auth. Yields its dashboard
    address and the env its clients need (RAY_ADDRESS lets `ray.init()`, e.g. in `dde serve`, join it)."""
    port, dashboard = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    if "RAY_AUTH_TOKEN" not in env and not os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # a fresh machine (CI): the cluster and its clients share it
    head = subprocess.Popen(
        [f"{BIN}/ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
         "--include-dashboard", "true", "--disable-usage-stats", "--temp-dir", temp,
         # the suite's own local Ray holds the default agent ports: a second cluster needs its own
         *[arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                            "--metrics-export-port", "--runtime-env-agent-port", "--ray-client-server-port")
           for arg in (flag, str(free_port()))]],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while not dashboard_up(address):
        if time.time() > deadline or head.poll() is not None:
            os.killpg(head.pid, signal.SIGKILL)
            pytest.fail("ray start --head did not come up")
        time.sleep(1)
    yield address, dict(env, RAY_ADDRESS=f"127.0.0.1:{port}")
    # `ray start --block` stops its processes in order on SIGTERM (seconds; a SIGTERM to the
    # whole group hangs it); whatever is left of the group then gets SIGKILL
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight StableDiffusionPipeline folder with the embedded model's layout."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.lab.train.diffusion import export_pipeline
    from engine.models.embedded import text_encoder_config, vae_config
    from engine.models.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    vae = AutoencoderKL(**dict(vae_config(), block_out_channels=(8, 8, 8), norm_num_groups=4))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=128,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2)
    text = CLIPTextModel(CLIPTextConfig(**text_encoder_config(len(tokenizer), tokenizer.bos_token_id,
                                                              tokenizer.eos_token_id)))
    folder = tmp_path_factory.mktemp("tiny") / "model"
    export_pipeline(str(folder), vae, text, tokenizer, unet)
    return str(folder)
