"""Comparing two finished outputs byte for byte, free ports, a TCP gate for storage outages, and an
HTTP proxy that throttles like S3 (503 SlowDown)."""

import hashlib
import json
import os
import socket
import threading

# report.html is left out on purpose: it shows timings, which differ between two runs of one spec.
PUBLISHED = ("coco/instances.json", "coco/images", "coco/semantic", "parquet", "README.md", "preview.png",
             "manifest.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def download(store, dest) -> str:
    """A copy of a finished output on another filesystem (S3), for dataset_digest and job_record."""
    store.fs.get(store.root + "/", str(dest), recursive=True)
    return str(dest)


class Gate:
    """A TCP forwarder on 127.0.0.1 in front of a real endpoint, so a test can cut the network.

    ``down()`` closes the listening socket and every open connection: clients get 'connection
    refused', as from a stopped server. ``up()`` listens on the same port again. ``lose_response(b)``
    lets the next request that contains ``b`` reach the server and cuts the connection before the
    client hears the answer: the request took effect, the client does not know it.
    """

    def __init__(self, upstream: str):
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lost = 0
        self._lose: bytes | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        listener.close()
        with self._lock:
            for conn in self._open:
                _cut(conn)
            self._open.clear()

    def lose_response(self, marker: bytes) -> None:
        self._lose = marker.lower()

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(0.2)  # close() does not wake a blocked accept(): poll for it
        while listener is self._listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._open.update((client, upstream))
            cut = threading.Event()
            threading.Thread(target=self._pump, args=(client, upstream, cut, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, cut, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: threading.Event, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and self._lose and self._lose in data.lower():
                    self._lose = None
                    cut.set()
                elif not requests and cut.is_set() and not data.startswith(b"HTTP/1.1 100"):
                    self.lost += 1  # the server has answered (not just '100 Continue'); the client never hears it
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _cut(src)
            _cut(dst)


def _cut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in the other pump thread
    except OSError:
        pass
    conn.close()


class Throttle:
    """An HTTP proxy on 127.0.0.1 in front of a real S3 endpoint that answers some requests as S3
    does when it throttles: ``503 SlowDown`` with ``Retry-After: 1``. ``throttle(s)`` answers every
    request so for ``s`` seconds; ``every(n)`` answers every n-th request so (0: none). Other
    requests reach the endpoint unchanged. ``throttled`` counts the 503s sent."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, upstream: str):
        from http.server import ThreadingHTTPServer

        self.upstream = upstream.rsplit("/", 1)[1].rsplit(":", 1)
        self.throttled, self._until, self._every, self._seen = 0, 0.0, 0, 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hit(self) -> bool:
        """Whether to throttle the request that arrives now."""
        import time

        with self._lock:
            self._seen += 1
            hit = time.time() < self._until or bool(self._every and self._seen % self._every == 0)
            self.throttled += hit
            return hit

    def throttle(self, seconds: float) -> None:
        import time

        self._until = time.time() + seconds

    def every(self, n: int) -> None:
        self._every = n

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _proxy_handler(throttle: Throttle):
    import http.client
    from http.server import BaseHTTPRequestHandler

    host, port = throttle.upstream

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then a blank line
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()

        def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            length = str(len(data))
            for k, v in headers:
                if k.lower() == "content-length" and self.command == "HEAD":
                    length = v  # the object's size: a HEAD answer has no body
                elif k.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _handle(self) -> None:
            body = self._body()
            if throttle.hit():
                self._reply(503, [("Retry-After", "1"), ("Content-Type", "application/xml")], Throttle.BODY)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                self._reply(response.status, response.getheaders(), response.read())
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


def random_controlnet(model: str, folder: str) -> str:
    """A random ControlNet made from ``model``'s UNet (conditioning downsamples by 4, like the tiny
    VAEs), its zero convolutions given weights (else it would be the plain model), saved to ``folder``."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16))
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]:
            block.weight.normal_(0, 0.5)
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder
