"""Real RTSP cameras on 127.0.0.1 for the live-source tests: tests/rtsp_camera.py run by Debian's python3."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with gi; the project's venv has none
CAMERA = Path(__file__).with_name("rtsp_camera.py")
MISSING_EXIT = 3  # rtsp_camera.py: a GStreamer package is missing


class Camera:
    """tests/rtsp_camera.py as a subprocess: start, kill (the camera goes away), start again on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, seconds: float = 60, fps: int = 15, size: str = "320x240") -> None:
        """Start serving ``size`` frames at ``fps``; returns once clients can connect (bounded: 20 s)."""
        if not Path(SYSTEM_PYTHON).exists():
            raise LookupError(f"{SYSTEM_PYTHON} not found")
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(CAMERA), "--port", str(self.port), "--seconds", str(seconds), "--fps", str(fps)]
            + ["--size", size],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(20)
        line = box[0] if box else ""
        if not line.startswith("ready"):
            proc.kill()
            rc, err = proc.wait(), proc.stderr.read().strip()
            if rc == MISSING_EXIT:
                raise LookupError(err)
            raise RuntimeError(f"the RTSP camera did not start (exit {rc}): {err}")
        self.port, self.proc = int(line.split()[1]), proc

    def kill(self) -> None:
        """The camera goes away at once (SIGKILL: no goodbye to the clients)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_cameras(n: int, **start: Any) -> Iterator[list[Camera]]:
    """``n`` started cameras (``start``: Camera.start's arguments), killed afterwards. Without the RTSP server's
    packages the test is skipped, or fails under CLO_EXPORT_REQUIRE_RTSP=1 (CI)."""
    cams = [Camera() for _ in range(n)]
    try:
        for cam in cams:
            cam.start(**start)
        yield cams
    except LookupError as e:
        reason = f"no RTSP camera for the live-source tests ({e}); install it with: make system-deps"
        if os.environ.get("CLO_EXPORT_REQUIRE_RTSP") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        for cam in cams:
            if cam.proc is not None:
                cam.kill()
