"""The one reading of a ``--device`` value: cpu, cuda or cuda:N (or a CUDA index from Python)."""

from __future__ import annotations

from typing import Optional, Union

from clo_export.errors import CloExportError


def device_index(device: Union[str, int, None]) -> Optional[int]:
    """The CUDA device a ``--device`` value names: None and "cuda" -> 0, "cuda:N" and N -> N, "cpu" -> None.

    Anything else is a one-line CloExportError naming the accepted spellings.
    """
    if device is None or device == "cuda":
        return 0
    if device == "cpu":
        return None
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return device
    text = str(device)
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise CloExportError(f"--device '{device}' is not a device; use cpu, cuda or cuda:N")
