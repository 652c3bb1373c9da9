"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

Debian's chromium, installed by tests/tools/ensure_chromium.sh: no browser download and no
websocket client. Messages are JSON, NUL-terminated, on fd 3 (to Chromium) and fd 4 (from it).
"""

import json
import os
import select
import shutil
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENSURE = os.path.join(REPO, "tests", "tools", "ensure_chromium.sh")
# Root needs --no-sandbox; the rest keep Chromium off the network this machine does not have.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
# What a page's images say once it has loaded: an image that failed has naturalWidth 0.
IMAGES_JS = """({title: document.title, text: document.body.innerText,
  images: Array.from(document.images, i => ({id: i.id, complete: i.complete,
                                             width: i.naturalWidth, height: i.naturalHeight}))})"""


def find_chromium() -> tuple[str | None, str]:
    """Chromium's path, installing it if needed; else None and why it could not be had."""
    if shutil.which("chromium"):
        return shutil.which("chromium"), ""
    proc = subprocess.run(["bash", ENSURE], capture_output=True, text=True)
    return shutil.which("chromium"), proc.stderr.strip()[-600:]


class Browser:
    def __init__(self, binary: str, profile: str):
        to_chromium, self._to = os.pipe()
        self._from, from_chromium = os.pipe()
        script = f'exec "$0" "$@" 3<&{to_chromium} 4>&{from_chromium}'  # the pipe on the fds Chromium expects
        self.proc = subprocess.Popen(["bash", "-c", script, binary, *FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-pipe", "about:blank"],
                                     pass_fds=(to_chromium, from_chromium),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer, self._id, self._events = b"", 0, []

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while True:
            for event in self._events:
                if event.get("method") == method:
                    self._events.remove(event)
                    return event
            self._events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited ({self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._to)
        os.close(self._from)


def open_page(browser: Browser, url: str, width: int = 1280) -> tuple[dict, bytes]:
    """Load ``url`` until its load event (every image fetched and decoded); what its images
    report, and a PNG of the whole page."""
    import base64

    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    browser.call("Page.enable", session=session)
    browser.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
    navigation = browser.call("Page.navigate", {"url": url}, session)
    assert "errorText" not in navigation, navigation
    browser.wait_event("Page.loadEventFired")
    page = browser.call("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                        session)["result"]["value"]
    height = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
    shot = browser.call("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}, session)
    return page, base64.b64decode(shot["data"])
