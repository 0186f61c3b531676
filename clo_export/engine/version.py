"""TensorRT version numbers parsed from `tensorrt.__version__`-style strings, ordered."""

from __future__ import annotations

import re
from dataclasses import dataclass

from clo_export.errors import CloExportError

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class TrtVersion:
    """major.minor.patch of a TensorRT release; the build number ("8.5.2.2" -> 8.5.2) is dropped."""

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str | TrtVersion) -> TrtVersion:
        """Parse "8.5.2.2", "10.3.0", "11.4.0.106", "10.7.0.post1" or "10.3"."""
        if isinstance(text, TrtVersion):
            return text
        m = _VERSION_RE.match(str(text))
        if not m:
            raise CloExportError(f"cannot read TensorRT version {text!r}; expected a version like 10.3.0")
        return cls(int(m[1]), int(m[2]), int(m[3] or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"
