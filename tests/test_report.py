"""The job report: `dde report` and the report.html of finalize, opened from object storage in
headless Chromium. The test keeps its screenshot as bench/results/report-screenshot.png."""

import base64
import io
import os
import re
import subprocess
import urllib.request

import pytest
from PIL import Image

from engine.job.runner import open_job
from engine.output.storage import Store
from engine.spec import parse_spec
from workers.unit import UnitMaker

from .chromium import Browser, find_chromium, open_page
from .conftest import DDE, REPO, S3_SECRET, s3_env
from .test_sink import first_unit

SCREENSHOT = os.path.join(REPO, "bench", "results", "report-screenshot.png")
PICTURES = ("samples", "classes", "throughput")


@pytest.fixture(scope="module")
def chromium():
    binary, why = find_chromium()
    if binary is None:
        pytest.skip(f"chromium is missing and tests/tools/ensure_chromium.sh could not install it: {why}")
    return binary


def data_uri_png(page: str, element_id: str) -> Image.Image:
    encoded = re.search(rf'<img id="{element_id}" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page).group(1)
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def test_report_of_an_interrupted_local_job(spec_data, tmp_path):
    """One unit committed and still staged: the page draws its images from the staging folder."""
    spec = parse_spec(spec_data)
    open_job(spec)
    UnitMaker(spec).make(first_unit(spec))
    out = tmp_path / "page.html"
    proc = subprocess.run([DDE, "report", spec.output, "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"report: {out}"
    assert not os.path.exists(os.path.join(spec.output, "report.html"))  # --out writes there only
    page = out.read_text()
    assert "<td>interrupted</td>" in page and "<td>8</td>" in page  # state and images
    assert data_uri_png(page, "samples").size == (6 * 192, 2 * 192)  # the unit's 8 images, 6 a row
    assert all(data_uri_png(page, p).width > 300 for p in PICTURES)


def test_report_of_something_else_is_a_user_error(tmp_path):
    proc = subprocess.run([DDE, "report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: URI: expected the output of a dde job"), proc.stderr


@pytest.mark.ray
def test_report_opens_from_s3_in_headless_chromium(s3_job, chromium, tmp_path):
    spec, result = s3_job
    endpoint = spec.storage_options["client_kwargs"]["endpoint_url"]
    written = subprocess.run([DDE, "report", spec.output], env=s3_env(endpoint), capture_output=True, text=True,
                             timeout=300)
    assert written.returncode == 0, written.stderr[-2000:]
    assert written.stdout.strip() == f"report: {spec.output}/report.html"
    assert S3_SECRET not in written.stdout + written.stderr

    store = Store(spec.output, spec.storage_options)
    url = store.fs.url(store.path("report.html"), expires=600)  # a presigned link, as a user would share
    with urllib.request.urlopen(url) as response:
        assert response.headers["Content-Type"].startswith("text/html")  # else a browser downloads it
    browser = Browser(chromium, str(tmp_path / "profile"))
    try:
        page, png = open_page(browser, url)
    finally:
        browser.close()

    assert page["title"] == f"dde report: {spec.name}"
    assert [image["id"] for image in page["images"]] == list(PICTURES)
    for image in page["images"]:
        assert image["complete"] and image["width"] > 300 and image["height"] > 150, image
    assert "finalized (bounds_met)" in page["text"]
    for name, count in result.counts.items():  # the class table: instances against the bound of 10
        assert re.search(rf"{name}\s+{count}\s+10\s+met", page["text"]), name
    shot = Image.open(io.BytesIO(png))
    assert shot.width == 1280 and shot.height > 1500
    assert len(set(shot.convert("RGB").getdata())) > 1000  # the pictures are drawn, not empty boxes
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    with open(SCREENSHOT, "wb") as f:
        f.write(png)
