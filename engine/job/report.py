"""The job report: one static page, ``report.html``, written by finalize and by ``dde report URI``.

Everything on it is read from storage (the recorded spec, the commit markers, the first
parquet shards), so it describes a running, interrupted or finalized job alike:

- a grid of sample images with their masks, boxes and class names (``preview.render_preview``);
- instances per class against their lower bounds, as a bar chart and a table;
- throughput over time (cumulative images and rejects, images/s) and the reject reasons.

The pictures are PNGs embedded as data URIs and the page has no script and no other file,
so it opens straight from object storage (it is stored as text/html). It shows no storage
options, so no credentials. Its timings differ between two runs of one spec, which is why
the byte-identical dataset leaves it out.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter

from ..output.layout import REPORT_FILE
from ..output.ledger import Ledger
from ..output.storage import Store
from .status import job_status

__all__ = ["build_report", "write_report"]

_STYLE = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;padding:0 16px;color:#222}
h1{margin-bottom:4px}h2{margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin-top:0}table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 10px;text-align:left}th{background:#f3f3f3}td.n{text-align:right}
img{max-width:100%;border:1px solid #ddd}.met{color:#1f7a1f}.short{color:#b85c00;font-weight:bold}
"""


def _png(figure) -> bytes:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _img(element_id: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{element_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _bounds_chart(classes: dict[str, dict]) -> bytes:
    from matplotlib.figure import Figure

    names = list(classes)
    rows = range(len(names))
    figure = Figure(figsize=(8, 1.2 + 0.32 * len(names)), dpi=100)
    ax = figure.subplots()
    counts = [c["count"] for c in classes.values()]
    ax.barh(rows, counts, color=["#2ca02c" if c["met"] else "#ff7f0e" for c in classes.values()],
            label="instances (green: bound met)")
    ax.scatter([c["lower_bound"] for c in classes.values()], rows, marker="|", s=300, color="black",
               zorder=3, label="lower bound")
    for row, count in zip(rows, counts):
        ax.annotate(str(count), (count, row), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(list(rows), names)
    ax.invert_yaxis()  # classes top to bottom in spec order
    ax.set_xlabel("instances")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the bars, never over them
    return _png(figure)


def _time_scale(span_s: float) -> tuple[float, str]:
    if span_s > 7200:
        return 3600.0, "hours"
    return (60.0, "minutes") if span_s > 300 else (1.0, "seconds")


def _throughput_chart(units: list[dict], rate: float | None) -> bytes:
    """Cumulative images and rejects, and images/s, against time since the first unit started;
    ``rate``: the job's throughput (``engine.job.throughput``), drawn across the per-bin rates."""
    import numpy as np
    from matplotlib.figure import Figure

    units = sorted(units, key=lambda u: u["committed_at"])
    start = min(u["committed_at"] - u["seconds"] for u in units)
    t = np.array([u["committed_at"] - start for u in units])
    images = np.array([u["images"] for u in units])
    divisor, unit_name = _time_scale(float(t[-1]))
    figure = Figure(figsize=(8, 5), dpi=100)
    top, bottom = figure.subplots(2, 1, sharex=True)
    x = np.concatenate([[0.0], t]) / divisor  # both curves start at zero when the first unit starts
    top.step(x, np.cumsum([0, *images]), where="post", label="images")
    top.step(x, np.cumsum([0, *(len(u["rejects"]) for u in units)]), where="post", color="#d62728",
             label="rejected images")
    top.set_ylabel("cumulative")
    top.legend(loc="upper left", fontsize=8)
    per_bin, edges = np.histogram(t, bins=max(1, min(30, len(units) // 2)), range=(0, float(t[-1]) or 1.0),
                                  weights=images)
    bottom.stairs(per_bin / np.diff(edges), edges / divisor, fill=True, alpha=0.6)
    if rate:
        bottom.axhline(rate, color="#333", linestyle="--", label=f"the job's rate: {rate:.2f} images / s")
        bottom.legend(loc="upper right", fontsize=8)
    bottom.set_ylabel("images / s")
    bottom.set_xlabel(f"{unit_name} since the first unit started")
    return _png(figure)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value, css: str = "") -> str:
    attr = f' class="{css}"' if css else ""
    return f"<td{attr}>{html.escape(str(value))}</td>"


def _summary(status: dict) -> str:
    rate = status["images_per_s"]
    rows = [("state", status["state"] + (f" ({status['stop_reason']})" if status["stop_reason"] else "")),
            ("images", status["images"]), ("instances", status["instances"]), ("rejected images", status["rejects"]),
            ("units committed", status["units_done"]), ("waves planned", status["waves_planned"]),
            ("images / s", rate if rate is not None else "n/a"), ("running time", f"{status['wall_s']:.0f} s"),
            ("ETA", f"{status['eta_s']:.0f} s" if status["eta_s"] is not None else "n/a"),
            ("stuck classes", ", ".join(status["stuck"]) or "none"),
            ("input notes", "; ".join(status["notes"]) or "none")]
    return _table(["", ""], [[f"<th>{html.escape(k)}</th>", _cell(v)] for k, v in rows])


def _class_table(status: dict) -> str:
    rows = [[_cell(name), _cell(c["count"], "n"), _cell(c["lower_bound"], "n"),
             _cell(c["state"], css={"met": "met", "stuck": "short", "below": "short"}.get(c["state"], ""))]
            for name, c in status["classes"].items()]
    return _table(["class", "instances", "lower bound", "status"], rows)


def _reject_table(units: list[dict]) -> str:
    rejects = [r for u in sorted(units, key=lambda u: u["index"]) for r in u["rejects"]]
    if not rejects:
        return "<p>No image was rejected.</p>"
    first = {}
    for r in rejects:
        first.setdefault(r["reason"], r["image_id"])
    rows = [[_cell(reason), _cell(n, "n"), _cell(first[reason], "n")]
            for reason, n in Counter(r["reason"] for r in rejects).most_common(15)]
    return _table(["reject reason", "images", "first image id"], rows)


def _selection_table(rows: list | None) -> str:
    if rows is None:
        return ""
    cells = [[_cell(name), _cell(kept, "n"), _cell(rejected, "n")] for name, kept, rejected in rows]
    return "<h2>High-quality Image Selection</h2>" + _table(["class", "kept instances", "rejected instances"], cells)


def build_report(store: Store, grid: bytes | None = None) -> str:
    """The report page of the job at ``store``, as HTML text. ``grid`` is the sample grid PNG
    if the caller has drawn it already (finalize has: ``preview.png``)."""
    from .preview import SAMPLES, committed_shards, render_preview

    ledger = Ledger(store)
    status = job_status(store, ledger)
    units = list(ledger.units.values())
    grid = grid or render_preview(store, committed_shards(store, SAMPLES))
    name = html.escape(status["name"])
    samples = (_img("samples", grid, "sample images with their masks, boxes and class names") if grid
               else "<p>No image is committed yet.</p>")
    chart = _throughput_chart(units, status["images_per_s"]) if units else None
    throughput = (_img("throughput", chart, "images and rejects over time, and images per second")
                  if units else "<p>No unit is committed yet.</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dde report: {name}</title><style>{_STYLE}</style></head>
<body>
<h1>dde report: {name}</h1>
<p class="meta">{html.escape(status['output'])} &middot; spec fingerprint {html.escape(status['fingerprint'])}
 &middot; written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>
{_summary(status)}
<h2>Samples</h2>
{samples}
<h2>Instances per class and their lower bounds</h2>
{_img("classes", _bounds_chart(status["classes"]), "instances per class against their lower bounds")}
{_class_table(status)}
<h2>Throughput and rejects</h2>
{throughput}
{_reject_table(units)}
{_selection_table(status.get("selection"))}
</body></html>
"""


def write_report(store: Store, out: str | None = None, grid: bytes | None = None) -> str:
    """Write the page into the job's output as ``report.html``, or to the local file ``out``; returns where."""
    page = build_report(store, grid).encode()
    if out:
        with open(out, "wb") as f:
            f.write(page)
        return out
    store.write_bytes(REPORT_FILE, page, content_type="text/html; charset=utf-8")
    return f"{store.uri.rstrip('/')}/{REPORT_FILE}"
