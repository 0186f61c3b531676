"""Image sizes: parsing ``--imgsz``, stride checks, and the message for incompatible sizes."""

from __future__ import annotations

import logging
from pathlib import Path

from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

DEFAULT_IMGSZ = (640, 640)  # YOLOv5's training default: the size of a checkpoint that records none


def parse_imgsz(text: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """'640' -> (640, 640); '480,640' or '480x640' -> (480, 640) as (height, width)."""
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, (tuple, list)):
        parts = [str(v) for v in text]
    else:
        parts = text.replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or min(vals) <= 0:
        raise CloExportError(f"--imgsz '{text}' is not a size; use one number (640) or height,width (480,640)")
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def size_text(imgsz: tuple[int, int]) -> str:
    """(256, 320) -> '256x320' (height x width)."""
    return f"{imgsz[0]}x{imgsz[1]}"


def resolve_imgsz(name: str, trained: tuple[int, int] | None, requested: tuple[int, int] | None) -> tuple[int, int]:
    """The size to run checkpoint ``name`` at: ``requested``, else its training size, else 640; logs which and why.

    A requested size other than the training size is allowed, with one warning naming both: the
    model sees objects at another scale than it learnt, and its detections change.
    """
    if requested is not None:
        size = (int(requested[0]), int(requested[1]))
        if trained is None:
            log.info("imgsz %s: as requested (%s records no training size)", size_text(size), name)
        elif tuple(trained) != size:
            log.warning(
                "imgsz %s as requested, but %s was trained at %s: its detections differ at another size",
                size_text(size),
                name,
                size_text(trained),
            )
        else:
            log.info("imgsz %s: the checkpoint's training size", size_text(size))
        return size
    if trained is not None:
        log.info("imgsz %s: the checkpoint's training size", size_text(trained))
        return (int(trained[0]), int(trained[1]))
    log.info(
        "imgsz %s: %s records no training size; YOLOv5's default (pass --imgsz H,W with the size it was trained at)",
        size_text(DEFAULT_IMGSZ),
        name,
    )
    return DEFAULT_IMGSZ


def runner_imgsz(
    model: str | Path, requested: tuple[int, int] | None, checkpoint: tuple[int, int]
) -> tuple[int, int] | None:
    """The size to run ``model`` at beside its checkpoint: ``requested``; an ONNX fixing none runs at ``checkpoint``."""
    if requested is not None or Path(model).suffix.lower() != ".onnx":
        return requested
    from clo_export.artifacts import read_metadata

    return checkpoint if read_metadata(model).imgsz is None else None


def model_imgsz(model_name: str, known: tuple[int, int] | None, requested: tuple[int, int] | None) -> tuple[int, int]:
    """The input size to run a model at: its fixed or recorded size, else ``--imgsz``; never a guess.

    ``known`` is the size the model file fixes (static input dims, or our ``imgsz`` metadata);
    YOLOv5's ``--dynamic`` exports have neither, and running them at a default size silently
    changes every detection.
    """
    if known is not None:
        if requested is not None and tuple(requested) != tuple(known):
            raise CloExportError(
                f"'{model_name}' takes {known[0]}x{known[1]} inputs only; drop --imgsz or re-export at "
                f"{requested[0]},{requested[1]}"
            )
        return (int(known[0]), int(known[1]))
    if requested is None:
        raise CloExportError(
            f"'{model_name}' has no fixed input size and no imgsz in its metadata (a --dynamic export); "
            "pass --imgsz H,W with the size it was trained at"
        )
    return (int(requested[0]), int(requested[1]))


def nearest_multiples(x: int, multiple: int) -> list[int]:
    """The multiples of ``multiple`` just below and above ``x`` (positive, distinct)."""
    lo = (x // multiple) * multiple
    return sorted({v for v in (lo, lo + multiple) if v > 0})


def size_hint(imgsz: tuple[int, int], multiple: int) -> str:
    """'512,640 or 640,640'-style suggestions of valid sizes near ``imgsz``."""
    hs, ws = nearest_multiples(imgsz[0], multiple), nearest_multiples(imgsz[1], multiple)
    options = sorted({(h, w) for h in hs for w in ws}, key=lambda s: abs(s[0] - imgsz[0]) + abs(s[1] - imgsz[1]))
    return " or ".join(f"{h},{w}" for h, w in options[:2])


def check_stride_multiple(imgsz: tuple[int, int], stride: int, valid_multiple: int | None = None) -> None:
    """Refuse sizes that are not a multiple of the model's largest stride; suggest valid ones."""
    if imgsz[0] % stride or imgsz[1] % stride:
        raise CloExportError(
            f"--imgsz {imgsz[0]},{imgsz[1]} is not a multiple of the model stride {stride}; "
            f"use --imgsz {size_hint(imgsz, valid_multiple or stride)}"
        )


def window_error(layer: int, name: str, map_hw: tuple[int, int], window: int, in_stride: int | None) -> CloExportError:
    """The error for a feature map that a windowed block cannot split into whole windows."""
    msg = f"layer {layer} {name}: its {map_hw[0]}x{map_hw[1]} feature map is not divisible by window_size {window}"
    if in_stride:
        multiple = in_stride * window
        img = (map_hw[0] * in_stride, map_hw[1] * in_stride)
        msg += (
            f" (image {img[0]}x{img[1]}, stride {in_stride}); image height and width must be "
            f"multiples of {multiple}: use --imgsz {size_hint(img, multiple)}"
        )
    return CloExportError(msg)


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


EXPORT_FACTOR = 4  # tracing, the simplifier and the parity session each hold the activations again


def activation_bytes(model, imgsz: tuple[int, int], batch: int = 1) -> int:
    """Estimated bytes of every module output in one forward pass at ``imgsz``.

    Measured with a forward pass at the model's smallest valid size and scaled by the pixel
    count, so nothing of the requested size is allocated.
    """
    import torch

    side = int(model.size_multiple()) if hasattr(model, "size_multiple") else 64
    total = [0]

    def add(value) -> None:
        if torch.is_tensor(value):
            total[0] += value.numel() * value.element_size()
        elif isinstance(value, (list, tuple)):
            for v in value:
                add(v)

    hooks = [m.register_forward_hook(lambda _m, _i, out: add(out)) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side, dtype=next(model.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()
    return int(total[0] * (imgsz[0] * imgsz[1]) / (side * side) * batch)


def check_memory(model, imgsz: tuple[int, int], batch: int = 1, factor: int = EXPORT_FACTOR) -> None:
    """Refuse an input size whose activations cannot fit in this machine's memory, before allocating them."""
    need = activation_bytes(model, imgsz, batch) * factor
    free = available_memory()
    if free is not None and need > free:
        raise CloExportError(
            f"--imgsz {imgsz[0]},{imgsz[1]} (batch {batch}) needs about {need / 2**30:.1f} GiB for exporting, but only "
            f"{free / 2**30:.1f} GiB of memory is available; use a smaller --imgsz (640 is YOLOv5's default) or "
            f"--export-batch"
        )
