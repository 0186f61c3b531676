"""Range methods (entropy, percentile, minmax), the growing histogram, and the ranges cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from clo_export.errors import CloExportError
from clo_export.quantization.cache import CacheKey, load_ranges, preprocess_params, save_ranges
from clo_export.quantization.ranges import AbsHistogram, RangeCollector, amax_from


def gaussian_hist(seed: int = 0, outlier: float = 40.0) -> AbsHistogram:
    rng = np.random.default_rng(seed)
    h = AbsHistogram()
    for _ in range(4):
        h.add(rng.standard_normal(50_000).astype(np.float32) * 2)
    h.add(np.array([outlier], np.float32))
    return h


def test_methods_order_and_outlier_handling():
    h = gaussian_hist()
    mm, pc, en = (amax_from(h, m) for m in ("minmax", "percentile", "entropy"))
    assert mm == pytest.approx(40.0)
    assert 6.0 < pc < 10.0  # ~3.9 sigma of N(0, 2)
    assert 5.0 < en < 15.0  # entropy clips the lone outlier
    with pytest.raises(CloExportError, match="unknown calibration method"):
        amax_from(h, "kl")


def test_histogram_grows_with_fixed_width_and_keeps_counts():
    h = AbsHistogram(num_bins=16)
    h.add(np.linspace(-1, 1, 101, dtype=np.float32))
    width = h.width
    h.add(np.array([3.0], np.float32))
    assert h.counts.sum() == 102 and h.amax == 3.0 and h.width == width and len(h.counts) == 48
    h.add(np.array([100.0], np.float32))  # beyond 8x num_bins: width doubles until it fits
    assert h.counts.sum() == 103 and len(h.counts) <= 8 * 16 and h.width > width
    counts, w = h.rebinned()
    assert counts.sum() == 103 and len(counts) <= 16 and w * len(counts) >= 100.0


def test_all_zero_tensor_and_collector():
    c = RangeCollector(["a", "b"])
    c.add({"a": np.zeros((1, 4), np.float32), "b": np.array([[-3.0, 1.0]], np.float32)})
    assert c.amaxes("entropy")["a"] == 0.0 and c.amaxes("minmax")["b"] == 3.0
    with pytest.raises(CloExportError, match="inf/NaN"):
        c.add({"a": np.array([np.inf], np.float32), "b": np.zeros(1, np.float32)})


def key(**kw) -> CacheKey:
    base = {"model_sha256": "a" * 64, "method": "entropy", "preprocess": preprocess_params((256, 256)), "images": "d1"}
    return CacheKey(**{**base, **kw})


def test_cache_hit_miss_and_every_kind_of_stale(tmp_path, caplog):
    path = tmp_path / "m.calib.json"
    assert load_ranges(path, key(), ["t"]).status == "missing"
    save_ranges(path, key(), {"t": 1.5, "u": 2.0}, 10)
    hit = load_ranges(path, key(), ["t"])
    assert hit.status == "hit" and hit.ranges == {"t": 1.5}
    cases = {
        "model_sha256": key(model_sha256="b" * 64),
        "method": key(method="minmax"),
        "preprocess": key(preprocess=preprocess_params((320, 320))),
        "images": key(images="d2"),
    }
    for field, other in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clo_export"):
            r = load_ranges(path, other, ["t"])
        assert r.status == "stale" and r.ranges is None and f"differs in: {field}" in caplog.text
    assert "without a range" in load_ranges(path, key(), ["t", "v"]).reason
    path.write_text("{not json")
    assert load_ranges(path, key(), ["t"]).status == "stale"
    save_ranges(path, key(), {"t": 1.0}, 3)
    assert json.loads(path.read_text())["format"] == "clo-export-calib/1"


def _quant_mse(x: np.ndarray, amax: float) -> float:
    s = amax / 127
    return float(np.mean((x - np.clip(np.round(x / s), -127, 127) * s) ** 2))


def test_mse_range_has_the_least_quantization_error():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * 2, np.float32([40.0])])
    h = AbsHistogram()
    h.add(x)
    amax = {m: amax_from(h, m) for m in ("mse", "minmax", "percentile", "entropy")}
    assert 6.0 < amax["mse"] < amax["minmax"]  # clips the outlier part way: its error weighs against 200k roundings
    errs = {m: _quant_mse(x, a) for m, a in amax.items()}
    assert errs["mse"] <= min(errs.values()) * 1.02, errs
