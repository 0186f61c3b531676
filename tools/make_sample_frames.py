#!/usr/bin/env python
"""Write the sample frames parity falls back on when no real frames are given (clo_export/assets/frames/).

    python tools/make_sample_frames.py            # what made the shipped frames (seed 21, 6 scenes)

Demo-generator scenes (clo_export.demo.shapes, the bundled model's training distribution, own seed)
at 320x240 as JPEG quality 90: small enough to ship (< 200 KB in all), with 3-8 shapes each so
detection parity has boxes to compare. Same seed, same scenes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clo_export.demo.shapes import make_dataset  # noqa: E402
from clo_export.export.parity import SAMPLE_FRAMES  # noqa: E402

SEED, COUNT, SIZE = 21, 6, (240, 320)  # (h, w)


def main() -> None:
    """Render the scenes and write them as sample_<i>.jpg."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_FRAMES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (img, boxes) in enumerate(make_dataset(SEED, COUNT, SIZE, n_objects=(3, 8))):
        path = args.out / f"sample_{i}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        print(f"{path}: {len(boxes)} shapes, {path.stat().st_size / 1e3:.1f} KB")


if __name__ == "__main__":
    main()
