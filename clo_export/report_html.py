"""A self-contained HTML page for a check: the numbers and side-by-side frames where the model disagrees most.

Images are embedded as base64 JPEG, so the page is one file that can be mailed or attached to CI.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from clo_export.data.sinks import draw_detections
from clo_export.fileio import write_text_atomic
from clo_export.pipeline.check import CheckedFrame
from clo_export.report import Report

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#0a7d22;font-weight:bold}.fail{color:#c0121f;font-weight:bold}
.pair{display:flex;gap:12px;margin-bottom:1.5em}.pair figure{margin:0;flex:1}.pair img{width:100%;border:1px solid #ccc}
figcaption{font-size:.9em;color:#555}
"""


def image_data_uri(img: np.ndarray, max_side: int = 800, quality: int = 85) -> str:
    """A BGR image as a data: URI (JPEG), downscaled so the page stays small."""
    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _numbers(report: Report) -> str:
    rows = []
    for name, s in report.tensors.items():
        ok = report.tolerance.violation(s) is None
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{s.max_abs:.3g}</td><td>{s.mean_abs:.3g}</td>"
            f"<td>{s.cosine:.7f}</td><td>{html.escape(report.tolerance.limit_text(name))}</td>"
            f"<td class={'pass' if ok else 'fail'}>{'ok' if ok else 'over'}</td></tr>"
        )
    table = (
        (
            "<table><tr><th>output</th><th>max |diff|</th><th>mean "
            "|diff|</th><th>cosine</th><th>limit</th><th></th></tr>" + "".join(rows) + "</table>"
        )
        if rows
        else ""
    )
    d = report.detections
    dets = ""
    if d is not None:
        ok = d.f1 >= report.tolerance.min_f1
        dets = (
            "<table><tr><th>detections</th><th>precision</th><th>recall</th><th>F1</th><th>mean IoU</th>"
            "<th>reference boxes</th><th>test boxes</th><th>matched</th><th>min F1</th></tr>"
            f"<tr><td class={'pass' if ok else 'fail'}>{'ok' if ok else 'below'}</td><td>{d.precision:.4f}</td>"
            f"<td>{d.recall:.4f}</td><td>{d.f1:.4f}</td><td>{d.mean_iou:.4f}</td><td>{d.n_ref}</td>"
            f"<td>{d.n_test}</td><td>{d.n_matched}</td><td>{report.tolerance.min_f1}</td></tr></table>"
        )
    return table + dets


def render_html(
    report: Report,
    frames: Sequence[CheckedFrame],
    names: dict[int, str],
    title: str,
    facts: dict[str, str] | None = None,
) -> str:
    """The page as a string."""
    word, _, why = report.describe().partition(": ")
    verdict = f"<p class={'pass' if report else 'fail'}>{word.upper()}: {html.escape(why)}</p>"
    fact_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in (facts or {}).items()
    )
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{CSS}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{verdict}",
        f"<table>{fact_rows}<tr><td>precision</td><td>{html.escape(report.precision)}</td></tr>"
        f"<tr><td>frames compared</td><td>{report.n_inputs}</td></tr></table>",
        "<h2>Numbers</h2>",
        _numbers(report),
    ]
    if frames:
        parts.append(f"<h2>Frames that disagree most ({len(frames)})</h2>")
    for f in frames:
        ref = image_data_uri(draw_detections(f.image, f.ref_dets, names))
        test = image_data_uri(draw_detections(f.image, f.test_dets, names))
        where = html.escape(Path(f.path).name)
        parts.append(
            f"<h3>frame {f.index} ({where}): F1 {f.f1:.4f}, max |diff| {f.max_abs:.3g}</h3><div class=pair>"
            f"<figure><img src='{ref}' alt='PyTorch frame {f.index}'><figcaption>PyTorch reference: "
            f"{len(f.ref_dets)} boxes</figcaption></figure>"
            f"<figure><img src='{test}' alt='model frame {f.index}'><figcaption>model under test: "
            f"{len(f.test_dets)} boxes</figcaption></figure></div>"
        )
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html_report(
    path: str | Path,
    report: Report,
    frames: Sequence[CheckedFrame],
    names: dict[int, str],
    title: str = "clo-export check",
    facts: dict[str, str] | None = None,
) -> Path:
    """Write the page atomically and return its path."""
    path = Path(path)
    write_text_atomic(path, render_html(report, frames, names, title, facts))
    return path
