"""Making one unit: load references, generate, label, write, commit. Runs inside a worker."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from engine.errors import InputChanged
from engine.job.conditions import ReferenceMasks, conditioned_on_masks
from engine.job.selection import Selection
from engine.output.layout import marker_file
from engine.output.sink import SinkContext, UnitSink
from engine.output.storage import Store, input_options
from engine.records import Unit
from engine.registry import build_backend, build_head
from engine.spec import JobSpec

__all__ = ["UnitMaker", "summary_of"]


def summary_of(marker: dict, won: bool) -> dict:
    """The small row a worker returns to the driver: never images."""
    keys = ("unit_id", "wave", "images", "instances", "counts", "backend_seconds", "seconds")
    return {**{k: marker[k] for k in keys}, "rejects": len(marker["rejects"]), "won": won}


def _read_reference(uri: str, storage_options: dict, expected_sha256: str | None,
                    max_pixels: int) -> tuple[np.ndarray, str]:
    """The reference as uint8 HxWx3 RGB as it looks (``images.decode_rgb``), and the sha256 of its bytes.

    Raises InputChanged if committed units of this job read other bytes under ``uri``
    (``expected_sha256``): a dataset never mixes two versions of one reference."""
    import fsspec

    from engine.images import decode_rgb

    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            data = f.read()
    except FileNotFoundError:
        if expected_sha256:
            raise InputChanged(f"prompts.images: the reference {uri!r} was read by committed units of this job "
                               f"(sha256 {expected_sha256[:12]}) and is now missing; restore it, or use a new "
                               f"output") from None
        raise
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise InputChanged(f"prompts.images: the reference {uri!r} changed since committed units of this job read "
                           f"it (sha256 {expected_sha256[:12]} -> {digest[:12]}, now {len(data)} bytes); resuming "
                           f"would mix both versions in one dataset. Restore the file, or use a new output")
    return decode_rgb(data, max_pixels), digest


class UnitMaker:
    """Holds one generator backend and one label head; makes whole units."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.store = Store(spec.output, spec.storage_options)
        classes = spec.class_specs
        if spec.generator.component.uses_torch:  # before anything loads or computes: the bytes depend on it
            import torch  # not for render: its actors start without torch

            # Ray sets OMP_NUM_THREADS from num_cpus, and torch splits kernels by thread count
            torch.set_num_threads(spec.resources.threads_per_actor)
        self.backend, self.head = build_backend(spec), build_head(spec)
        self.head.attach(self.backend)
        self.conditions = self.selection = None
        if conditioned_on_masks(spec) is not None:  # each request gets its reference's condition map
            self.conditions = ReferenceMasks.for_job(spec, self.backend)
        if spec.selection is not None:
            self.selection = Selection(spec.selection, classes)
        self.context = SinkContext(tuple(c.name for c in classes), self.backend.model_name, spec.label_head.name,
                                   spec.image_format, coco="coco" in spec.layout.formats)

    def make(self, unit: Unit) -> dict:
        existing = marker_file(unit.unit_id)
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

    def _fill(self, sink: UnitSink, unit: Unit) -> float:
        requests = []
        for image in unit.images:
            request = image.request()
            if image.reference_uri:
                try:
                    request.reference, sink.references[image.reference_uri] = _read_reference(
                        image.reference_uri, input_options(image.reference_uri, self.spec),
                        image.reference_sha256, self.spec.prompts.max_image_pixels)
                    if self.conditions is not None:
                        request.condition = self.conditions.condition(request.reference_id, request.reference)
                except InputChanged:
                    raise
                except Exception as e:  # missing or corrupt reference: record it, never crash the job
                    sink.reject(request, f"reference {image.reference_uri!r} unusable: {type(e).__name__}: {e}")
                    continue
            requests.append(request)
        busy = 0.0
        batch = self.backend.batch_size or len(requests) or 1
        for start in range(0, len(requests), batch):
            chunk = requests[start:start + batch]
            t0 = time.perf_counter()
            generated = self.backend.generate(chunk)
            labels = self.head.label(chunk, generated)
            verdicts = self.selection.judge(chunk, generated, labels) if self.selection else [None] * len(chunk)
            busy += time.perf_counter() - t0
            for request, gen, lab, verdict in zip(chunk, generated, labels, verdicts):
                if gen.reject:
                    sink.reject(request, gen.reject)
                elif verdict:
                    sink.reject(request, verdict["reason"], scores=verdict["scores"], classes=list(request.classes))
                else:
                    sink.write(request, gen, lab)
        return busy
