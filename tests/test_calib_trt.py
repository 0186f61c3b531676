"""TensorRT implicit calibrators: our calibration cache handling, and Polygraphy's Calibrator fed by our feeds.

Polygraphy's Calibrator is built on TensorRT's IInt8*Calibrator classes; here a stand-in base class takes
their place (TensorRT is not installed), so what runs is Polygraphy's real code without a GPU: the feeds,
the batch size it reports and the cache it hands TensorRT.
"""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest

from clo_export.data.preprocess import preprocess
from clo_export.errors import CloExportError
from clo_export.quantization.calibset import CalibrationData, Item
from clo_export.quantization.trt_calibrator import make_calibrator, read_cache, save_cache
from tests.helpers import write_images

ENTROPY = b"TRT-8502-EntropyCalibration2\nimages: 3c010a14\n"
MINMAX = b"TRT-8502-MinMaxCalibration\nimages: 3c010a14\n"


@pytest.fixture()
def fake_trt(monkeypatch):
    """A module named tensorrt with the two calibrator base classes (plain Python), version 8.5."""
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "8.5.2.2"
    for name in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8LegacyCalibrator", "IInt8Calibrator"):
        setattr(fake, name, type(name, (), {"__init__": lambda self: None}))
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def test_cache_is_read_only_when_made_by_the_same_algorithm(tmp_path, caplog):
    path = tmp_path / "m.entropy.cache"
    assert read_cache(path, "entropy") is None  # missing
    path.write_bytes(ENTROPY)
    assert read_cache(path, "entropy") == ENTROPY
    with caplog.at_level(logging.WARNING):
        assert read_cache(path, "minmax") is None
    assert "made by TRT-8502-EntropyCalibration2, not MinMaxCalibration" in caplog.text
    with pytest.raises(CloExportError, match="unknown calibrator"):
        read_cache(path, "percentile")


def test_save_cache_is_atomic_and_skips_unchanged(tmp_path):
    path = tmp_path / "m.minmax.cache"
    save_cache(types.SimpleNamespace(cache_contents=MINMAX), path)
    assert path.read_bytes() == MINMAX and [p.name for p in tmp_path.iterdir()] == ["m.minmax.cache"]
    mtime = path.stat().st_mtime_ns
    save_cache(types.SimpleNamespace(cache_contents=MINMAX), path)
    assert path.stat().st_mtime_ns == mtime
    save_cache(types.SimpleNamespace(cache_contents=None), tmp_path / "none.cache")
    assert not (tmp_path / "none.cache").exists()


def test_polygraphy_calibrator_over_our_feeds(tmp_path, fake_trt):
    paths = write_images(tmp_path / "imgs", 4)
    data = CalibrationData([Item(p) for p in paths], (64, 64), "images", batch=2)
    (tmp_path / "c.cache").write_bytes(MINMAX)
    cal = make_calibrator(data, "minmax", tmp_path / "c.cache")
    assert isinstance(cal, fake_trt.IInt8MinMaxCalibrator)
    assert cal.get_batch_size() == 1  # explicit-batch networks: the batch is in the feeds
    assert cal.read_calibration_cache() == MINMAX  # handed to TensorRT instead of calibrating
    feeds = list(cal.data_loader)
    assert len(feeds) == 2 and feeds[0]["images"].shape == (2, 3, 64, 64)
    import cv2

    want = preprocess(cv2.imread(str(data.items[0].path)), (64, 64))[0]
    assert np.array_equal(feeds[0]["images"][:1], want)  # the one preprocessing function
    fresh = make_calibrator(data, "entropy", tmp_path / "c.cache")  # a min-max cache is not reused
    assert isinstance(fresh, fake_trt.IInt8EntropyCalibrator2) and fresh.read_calibration_cache() is None


def test_calibrators_removed_in_11(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(CloExportError, match="removed in 11"):
        make_calibrator([], "entropy")


def test_no_tensorrt_is_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(CloExportError, match="pip install tensorrt"):
        make_calibrator([], "entropy")
