"""`OUT.engine.json`: what built an engine, so a mismatched TensorRT or GPU is refused with a fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from clo_export import __version__
from clo_export.artifacts import Sidecar, rebuild_command
from clo_export.engine.version import TrtVersion
from clo_export.errors import CloExportError

SCHEMA = 1


@dataclass(frozen=True)
class EngineSidecar(Sidecar):
    """Build facts recorded beside the engine; the engine file itself stays plain TensorRT bytes."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    input_name: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    names: tuple[str, ...]  # class names, index = class id
    stride: int
    imgsz: tuple[int, int]
    source_onnx: str  # file name, for the rebuild hint
    source_onnx_sha256: str
    build_seconds: float
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None  # (min, opt, max)
    parity: dict[str, Any] | None = None  # the engine's own check (engine/check.py): status, reference, limits, Report
    clo_export_version: str = __version__
    schema: int = field(default=SCHEMA)

    missing: ClassVar[str] = "so this engine's TensorRT/GPU are unknown"
    fix: ClassVar[str] = f"rebuild it with: {rebuild_command()}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rebuild_command(self) -> str:
        """The command that builds this engine again (its ONNX and precision)."""
        return rebuild_command(self.source_onnx, self.precision)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSidecar:
        """Build from parsed JSON, turning lists back into tuples; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        missing = known - set(data) - {"profile", "parity", "clo_export_version", "schema"}
        if missing:
            raise CloExportError(f"engine sidecar lacks {', '.join(sorted(missing))}; {cls.fix}")
        kw = {k: v if k == "parity" else _tuples(v) for k, v in data.items() if k in known}
        return cls(**kw)


def _tuples(value: Any) -> Any:
    """JSON lists -> tuples, recursively (dataclass fields are tuples)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def check_compatible(
    sidecar: EngineSidecar, running_trt_version: str, gpu_name: str, compute_capability: tuple[int, int]
) -> list[str]:
    """Raise CloExportError when this TensorRT version or GPU architecture cannot load the engine.

    A different GPU model of the same compute capability loads (TensorRT only warns), so it is
    returned as a warning string instead.
    """
    built_v, run_v = TrtVersion.parse(sidecar.tensorrt_version), TrtVersion.parse(running_trt_version)
    built_cc, run_cc = tuple(sidecar.compute_capability), tuple(compute_capability)
    if built_v != run_v or built_cc != run_cc:
        raise CloExportError(
            f"engine built with TensorRT {sidecar.tensorrt_version} on GPU {sidecar.gpu_name} (sm_{_sm(built_cc)}); "
            f"this is TensorRT {running_trt_version} on GPU {gpu_name} (sm_{_sm(run_cc)}) — rebuild it here with: "
            f"{sidecar.rebuild_command()}"
        )
    if sidecar.gpu_name != gpu_name:
        return [
            f"engine built on {sidecar.gpu_name}, running on {gpu_name} (same sm_{_sm(run_cc)}); "
            "rebuild here for best speed"
        ]
    return []


def _sm(cc: tuple[int, ...]) -> str:
    return "".join(str(c) for c in cc)
