"""TensorRT implicit calibrator adapter: plain core with a fake device, and the binding to a (fake) TensorRT."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest

from clo_export.calib.sources import CalibrationData, Item
from clo_export.calib.trt_calibrator import CalibratorCore, make_calibrator
from clo_export.data.preprocess import preprocess
from clo_export.errors import CloExportError
from tests.test_calib_sources import write_images


class HostDevice:
    """Device memory stand-in: numpy buffers addressed by their data pointer."""

    def __init__(self):
        self.buffers: dict[int, np.ndarray] = {}
        self.freed: list[int] = []

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(nbytes, np.uint8)
        self.buffers[buf.ctypes.data] = buf
        return buf.ctypes.data

    def copy_to(self, ptr: int, array: np.ndarray) -> None:
        self.buffers[ptr][: array.nbytes] = array.view(np.uint8).reshape(-1)

    def free(self, ptr: int) -> None:
        self.freed.append(ptr)

    def read(self, ptr: int, like: np.ndarray) -> np.ndarray:
        return self.buffers[ptr][: like.nbytes].view(like.dtype).reshape(like.shape)


def test_core_feeds_the_same_preprocessed_batches_then_stops(tmp_path):
    import cv2

    paths = sorted(write_images(tmp_path, 4, nested=False))
    device = HostDevice()
    core = CalibratorCore(CalibrationData([Item(p) for p in paths], (128, 128), batch=2), "entropy", device=device)
    assert core.batch_size == 2
    expected = np.concatenate([preprocess(cv2.imread(str(p)), (128, 128))[0] for p in paths])
    got = []
    while (ptrs := core.get_batch(["images"])) is not None:
        got.append(device.read(ptrs[0], expected[:2]).copy())
    assert core.batches == 2 and np.array_equal(np.concatenate(got), expected)
    assert len(device.buffers) == 1  # one buffer reused for every batch
    with pytest.raises(CloExportError, match="TensorRT asks for"):
        CalibratorCore([{"x": expected[:1]}], device=device).get_batch(["images"])
    core.close()
    assert device.freed


def test_cache_roundtrip_and_wrong_algorithm_is_ignored(tmp_path, caplog):
    cache = tmp_path / "trt.cache"
    entropy = CalibratorCore([], "entropy", cache)
    assert entropy.read_cache() is None
    entropy.write_cache(memoryview(b"TRT-8601-EntropyCalibration2\nimages: 3c010a14\n"))
    assert entropy.read_cache().startswith(b"TRT-8601-EntropyCalibration2")
    with caplog.at_level(logging.WARNING, logger="clo_export"):
        assert CalibratorCore([], "minmax", cache).read_cache() is None
    assert "not MinMaxCalibration" in caplog.text
    with pytest.raises(CloExportError, match="unknown calibrator"):
        CalibratorCore([], "percentile")


def test_make_calibrator_binds_the_tensorrt_base_class(monkeypatch, tmp_path):
    class FakeBase:
        def __init__(self):
            self.base_init = True

    fake = types.SimpleNamespace(__version__="10.3.0", IInt8EntropyCalibrator2=FakeBase)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    batch = np.ones((1, 3, 8, 8), np.float32)
    device = HostDevice()
    cal = make_calibrator([{"images": batch}], "entropy", tmp_path / "c.cache", device)
    assert isinstance(cal, FakeBase) and cal.base_init and type(cal).__name__ == "CloIInt8EntropyCalibrator2"
    assert cal.get_batch_size() == 1
    ptrs = cal.get_batch(["images"])
    assert np.array_equal(device.read(ptrs[0], batch), batch) and cal.get_batch(["images"]) is None
    cal.write_calibration_cache(b"TRT-100300-EntropyCalibration2\n")
    assert cal.read_calibration_cache() == b"TRT-100300-EntropyCalibration2\n"
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.0.0"))
    with pytest.raises(CloExportError, match="removed in 11"):
        make_calibrator([], "minmax")
