"""Making one unit: load references, generate, label, write, commit. Runs inside a worker."""

from __future__ import annotations

import io
import json
import time

import numpy as np

from .layout import marker_file
from .records import ImageRequest
from .registry import BACKENDS, HEADS
from .sink import SinkContext, UnitSink
from .spec import JobSpec
from .storage import Store

__all__ = ["UnitMaker", "summary_of"]


def summary_of(marker: dict, won: bool) -> dict:
    """The small row a worker returns to the driver: never images."""
    keys = ("unit_id", "wave", "images", "instances", "counts", "backend_seconds", "seconds")
    return {**{k: marker[k] for k in keys}, "rejects": len(marker["rejects"]), "won": won}


def _load_reference(uri: str, storage_options: dict) -> np.ndarray:
    import fsspec
    from PIL import Image

    with fsspec.open(uri, "rb", **(storage_options if "://" in uri else {})) as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class UnitMaker:
    """Holds one generator backend and one label head; makes whole units."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.store = Store(spec.output, spec.storage_options)
        classes = spec.class_specs
        backend_cls, head_cls = BACKENDS.get(spec.generator.name), HEADS.get(spec.label_head.name)
        self.backend = backend_cls(params=backend_cls.Params(**spec.generator.params), classes=classes)
        self.head = head_cls(params=head_cls.Params(**spec.label_head.params), classes=classes)
        self.head.attach(self.backend)
        self.context = SinkContext(tuple(c.name for c in classes), self.backend.model_name, spec.label_head.name)

    def make(self, unit: dict) -> dict:
        existing = marker_file(unit["unit_id"])
        if self.store.exists(existing):  # committed by an earlier attempt: nothing to do
            return summary_of(json.loads(self.store.read_bytes(existing)), won=False)
        sink = UnitSink(self.store, self.context, unit)
        sink.on_write_start()
        try:
            backend_seconds = self._fill(sink, unit)
            won, marker = sink.on_write_complete(backend_seconds)
        except BaseException:
            sink.on_write_failed()
            raise
        return summary_of(marker, won)

    def _fill(self, sink: UnitSink, unit: dict) -> float:
        requests = []
        for image in unit["requests"]:
            request = ImageRequest(image["image_id"], image["seed"], image["prompt"], image["negative_prompt"],
                                   list(image["classes"]), image["reference_id"])
            if image["reference_uri"]:
                try:
                    request.reference = _load_reference(image["reference_uri"], self.spec.storage_options)
                except Exception as e:  # missing or corrupt reference: record it, never crash the job
                    sink.reject(request, f"reference {image['reference_uri']!r} unusable: {type(e).__name__}: {e}")
                    continue
            requests.append(request)
        busy = 0.0
        batch = self.backend.batch_size or len(requests) or 1
        for start in range(0, len(requests), batch):
            chunk = requests[start:start + batch]
            t0 = time.perf_counter()
            generated = self.backend.generate(chunk)
            labels = self.head.label(chunk, generated)
            busy += time.perf_counter() - t0
            for request, gen, lab in zip(chunk, generated, labels):
                if gen.reject:
                    sink.reject(request, gen.reject)
                else:
                    sink.write(request, gen, lab)
        return busy
