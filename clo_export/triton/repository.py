"""Write a Triton model repository for an .onnx or .engine: the detector, pre/postprocessing, the ensemble.

Layout (NAME from ``--name``)::

    OUT/README.md  OUT/requirements.txt
    OUT/NAME/config.pbtxt  OUT/NAME/1/                       ensemble: image in, detections out
    OUT/NAME_preprocess/config.pbtxt  OUT/NAME_preprocess/1/model.py (+ clo_export/ modules)
    OUT/NAME_model/config.pbtxt  OUT/NAME_model/1/model.onnx | model.plan | model.py + model.onnx
    OUT/NAME_postprocess/config.pbtxt  OUT/NAME_postprocess/1/model.py (+ clo_export/ modules)

Everything is written into a temporary folder inside OUT and moved into place when complete; the
input model is copied, never moved, and a repository that would replace it is refused. The files a run
wrote are listed in ``OUT/.clo-export-manifest.json``: ``--overwrite`` replaces and removes only those,
and keeps (and names) every other file and version folder it finds in a model's folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from clo_export import __version__
from clo_export.errors import CloExportError
from clo_export.fileio import (
    SIDECAR_MARKER,
    check_name_length,
    json_text,
    make_dirs,
    part_name,
    remove_dirs,
    remove_stale_parts,
    sha256_file,
    write_text_atomic,
)
from clo_export.postprocess import NMS_OUTPUTS, has_nms_outputs
from clo_export.thresholds import DEFAULT, Thresholds
from clo_export.triton import config as C
from clo_export.triton.serverenv import repository_requirements

PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan", "python")
_PACKAGE = Path(__file__).resolve().parent.parent  # clo_export/
# clo_export modules the Python-backend models import: the one preprocessing function, NMS, box scaling
VENDORED = ("errors.py", "thresholds.py", "data/preprocess.py", "postprocess.py")
MARK = "written by clo-export triton"
MANIFEST = ".clo-export-manifest.json"  # in OUT: the files clo-export wrote there (relative, '/'-separated)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ONNX_TYPES = {1: np.float32, 10: np.float16, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_}


@dataclass(frozen=True)
class ModelFacts:
    """What the repository needs to know about the model file."""

    path: Path
    kind: str  # onnx | engine
    input: C.Tensor  # dims with the batch dimension first (-1: dynamic)
    outputs: list[C.Tensor]  # dims with the batch dimension first
    batch_range: tuple[int, int]  # (smallest, largest) batch the model takes
    names: dict[int, str]
    imgsz: tuple[int, int]
    stride: int
    precision: str
    nms: bool
    extra: dict[str, str] = field(default_factory=dict)  # more metadata for the config parameters


@dataclass(frozen=True)
class RepositoryOptions:
    """Everything ``clo-export triton`` can be asked for."""

    name: str | None = None
    platform: str | None = None  # None: from the model file
    serving: C.Serving = C.Serving()
    version: int = 1
    conf: float = DEFAULT.conf
    iou: float = DEFAULT.iou
    max_det: int = DEFAULT.max_det
    agnostic: bool = False
    threads: int = 0  # ONNX Runtime threads per instance of a --platform python model (0: its default)
    overwrite: bool = False


@dataclass(frozen=True)
class Repository:
    """What was written."""

    root: Path
    name: str
    models: dict[str, Path]  # model name -> its folder
    platform: str
    facts: ModelFacts
    readme: Path  # OUT/README.md, or OUT/NAME.README.md when README.md is the user's
    kept: list[str] = field(default_factory=list)  # files and folders in the models' folders clo-export did not write


# ------------------------------------------------------------------------------------------ model facts


def _onnx_tensor(value_info) -> C.Tensor:
    t = value_info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return C.Tensor(value_info.name, np.dtype(_ONNX_TYPES.get(t.elem_type, np.float32)), dims)


def onnx_facts(path: Path) -> ModelFacts:
    """Inputs, outputs, batch range and clo-export metadata of an ONNX model."""
    from clo_export.artifacts import graph_inputs, load_onnx, read_metadata

    model = load_onnx(path, load_external_data=False)
    inputs = [_onnx_tensor(i) for i in graph_inputs(model)]
    if len(inputs) != 1:
        raise CloExportError(
            f"'{path.name}' has {len(inputs)} inputs; clo-export triton serves detectors with one image input"
        )
    meta = read_metadata(model)
    inp = inputs[0]
    batch = inp.dims[0]
    imgsz = tuple(meta.imgsz) if meta.imgsz else (inp.dims[2], inp.dims[3])
    outputs = [_onnx_tensor(o) for o in model.graph.output]
    return ModelFacts(
        path,
        "onnx",
        inp,
        outputs,
        (1, 1 << 30) if batch == -1 else (batch, batch),
        dict(meta.names),
        imgsz,
        meta.stride,
        meta.precision or "fp32",
        bool(meta.nms),
    )


def engine_facts(path: Path) -> ModelFacts:
    """Batch range and build facts of a TensorRT engine from its sidecar; tensor types and shapes from its ONNX.

    The sidecar names the ONNX the engine was built from; it must lie beside the engine, because an
    engine's I/O types depend on how it was built (FP32 I/O with the FP16 flag below TensorRT 11,
    FP16 I/O from an FP16 ONNX) and the sidecar does not record them.
    """
    from clo_export.engine.sidecar import EngineSidecar

    side = EngineSidecar.read(path)
    source = path.parent / side.source_onnx
    if not source.is_file():
        raise CloExportError(
            f"'{side.source_onnx}', the ONNX '{path.name}' was built from, is not beside it; copy it "
            "there (clo-export triton reads the engine's tensor types and shapes from it)"
        )
    onnx_side = onnx_facts(source)
    if side.profile:
        lo, hi = side.profile[0][0], side.profile[2][0]
        shape = (-1, *side.input_shape[1:])
    else:
        lo = hi = side.input_shape[0]
        shape = tuple(side.input_shape)
    inp = C.Tensor(side.input_name, onnx_side.input.dtype, shape)
    outputs = [o for o in onnx_side.outputs if o.name in side.output_names]
    extra = {
        "tensorrt_version": side.tensorrt_version,
        "gpu": side.gpu_name,
        "compute_capability": ".".join(map(str, side.compute_capability)),
    }
    return ModelFacts(
        path,
        "engine",
        inp,
        outputs,
        (lo, hi),
        dict(enumerate(side.names)),
        tuple(side.imgsz),
        side.stride,
        side.precision,
        has_nms_outputs(side.output_names),
        extra,
    )


def model_facts(path: Path) -> ModelFacts:
    """Facts of an .onnx or .engine/.plan."""
    if not path.is_file():
        raise CloExportError(
            f"model '{path}' does not exist; pass an .onnx (clo-export onnx/quantize) or a .engine (clo-export trt)"
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return onnx_facts(path)
    if suffix in (".engine", ".plan"):
        return engine_facts(path)
    raise CloExportError(
        f"'{path.name}' is neither an .onnx nor a TensorRT .engine; export one with clo-export onnx or clo-export trt"
    )


# ------------------------------------------------------------------------------------------- checks


def resolve_platform(facts: ModelFacts, platform: str | None) -> str:
    """The Triton platform for the model: ONNX Runtime or TensorRT from the file, or ``python``."""
    if platform is None:
        return "tensorrt_plan" if facts.kind == "engine" else "onnxruntime_onnx"
    if platform not in PLATFORMS:
        raise CloExportError(f"--platform {platform} is not one of {', '.join(PLATFORMS)}")
    if facts.kind == "engine" and platform != "tensorrt_plan":
        raise CloExportError(
            f"'{facts.path.name}' is a TensorRT engine, served as tensorrt_plan only; pass the .onnx "
            f"for --platform {platform}"
        )
    if facts.kind == "onnx" and platform == "tensorrt_plan":
        raise CloExportError(
            f"--platform tensorrt_plan needs an engine built with the Triton container's TensorRT: "
            f"clo-export trt {facts.path.name} inside it, then pass the .engine"
        )
    return platform


def check_options(facts: ModelFacts, platform: str, opts: RepositoryOptions) -> None:
    """Refuse combinations Triton or the model cannot serve, each with how to fix it."""
    s = opts.serving
    name = default_name(facts.path) if opts.name is None else opts.name  # --name '' is refused, not the default
    if not _NAME.match(name):
        raise CloExportError(f"--name '{name}' is not a Triton model name; use letters, digits, '_', '-' and '.'")
    if s.max_batch < 1 or s.instances < 1:
        raise CloExportError(f"--max-batch {s.max_batch} and --instances {s.instances} must be at least 1")
    if s.kind not in (None, "gpu", "cpu"):
        raise CloExportError(f"--kind {s.kind} is not gpu or cpu")
    if platform == "tensorrt_plan" and s.kind == "cpu":
        raise CloExportError(
            "a TensorRT plan runs on the GPU only; drop --kind cpu, or serve the .onnx with --kind cpu"
        )
    if platform == "python" and s.kind == "gpu":
        raise CloExportError(
            "--platform python runs ONNX Runtime on the CPU; drop --kind gpu, or serve the .onnx "
            "without --platform python for the GPU"
        )
    bad = [b for b in s.preferred_batch if not 1 <= b <= s.max_batch]
    if bad:
        raise CloExportError(f"--preferred-batch {bad} must lie between 1 and --max-batch {s.max_batch}")
    if s.queue_delay_us < 0:
        raise CloExportError(f"--queue-delay-us {s.queue_delay_us} must be 0 or more")
    if opts.version < 1:
        raise CloExportError(f"--model-version {opts.version} must be 1 or more (Triton's version folders start at 1)")
    Thresholds(opts.conf, opts.iou, opts.max_det).validate()
    lo, hi = facts.batch_range
    if lo > 1:
        what = "engine's profile starts" if facts.kind == "engine" else "ONNX has a fixed batch"
        raise CloExportError(
            f"'{facts.path.name}' takes batches of {lo} or more (its {what} at {lo}); Triton sends "
            "single images too: " + _export_hint(facts, s.max_batch)
        )
    if s.max_batch > hi:
        what = (
            f"its profile covers batch {lo}..{hi}"
            if facts.kind == "engine" and lo != hi
            else f"it takes batch {hi} only"
        )
        raise CloExportError(
            f"--max-batch {s.max_batch} needs a model that takes batches up to {s.max_batch}, but "
            f"'{facts.path.name}' does not ({what}): {_export_hint(facts, s.max_batch)}"
        )


def _export_hint(facts: ModelFacts, max_batch: int) -> str:
    if facts.kind == "engine":
        return (
            f"rebuild it from a --dynamic-batch ONNX with clo-export trt MODEL.onnx --batch-range "
            f"1,{max_batch},{max_batch}, "
            "or pass --max-batch 1"
        )
    return "re-export with clo-export onnx best.pt --dynamic-batch (then quantize/trt as before), or pass --max-batch 1"


def default_name(path: Path) -> str:
    """A Triton model name from the file name (demo-shapes.int8.onnx -> demo-shapes_int8)."""
    stem = path.name
    for suffix in (".onnx", ".engine", ".plan"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "model"


# ------------------------------------------------------------------------------------------- configs


def _metadata(facts: ModelFacts) -> dict[str, object]:
    meta: dict[str, object] = {
        "clo_export.names": {str(k): v for k, v in sorted(facts.names.items())},
        "clo_export.imgsz": list(facts.imgsz),
        "clo_export.stride": facts.stride,
        "clo_export.precision": facts.precision,
        "clo_export.nms": facts.nms,
        "clo_export.source": facts.path.name,
        "clo_export.source_sha256": sha256_file(facts.path),
        "clo_export.version": __version__,
    }
    meta.update({C.PARAM_PREFIX + k: v for k, v in facts.extra.items()})
    return meta


def _no_batch(t: C.Tensor) -> C.Tensor:
    return C.Tensor(t.name, t.dtype, t.dims[1:], t.optional)


def build_configs(facts: ModelFacts, platform: str, opts: RepositoryOptions) -> dict[str, dict]:
    """The four configs, keyed by model name (the ensemble under ``opts.name``)."""
    s = replace(opts.serving, kind=opts.serving.kind or ("cpu" if platform == "python" else "gpu"))
    name = opts.name or default_name(facts.path)
    pre, model, post = f"{name}_preprocess", f"{name}_model", f"{name}_postprocess"
    meta = _metadata(facts)
    inp = _no_batch(facts.input)
    out_names = list(NMS_OUTPUTS) if facts.nms else ["output0"]
    by_name = {o.name: _no_batch(o) for o in facts.outputs}
    missing = [n for n in out_names if n not in by_name]
    if missing:
        raise CloExportError(
            f"'{facts.path.name}' has no output(s) {missing}; export it with clo-export onnx "
            "(output0, or num_dets/boxes/scores/classes with --nms)"
        )
    outputs = [by_name[n] for n in out_names]
    model_params = dict(meta)
    if platform == "python":
        model_params["threads"] = opts.threads
    if facts.input.dims[0] == 1:
        # A fixed batch of 1: Triton refuses max_batch_size >= 1 unless the first dimension is -1, so the
        # detector is a non-batching model with full shapes; the ensemble joins it to the batching steps
        # (Triton connects them when the full shapes match).
        full = {o.name: o for o in facts.outputs}
        configs = {
            model: C.model_config(
                model,
                platform,
                [facts.input],
                [full[n] for n in out_names],
                replace(s, max_batch=0, preferred_batch=()),
                model_params,
            )
        }
    else:
        configs = {model: C.model_config(model, platform, [inp], outputs, s, model_params)}

    side = C.Serving(max_batch=s.max_batch, instances=s.instances, kind="cpu")
    images_in = [
        C.Tensor(C.IMAGE, np.dtype(np.uint8), (-1,), optional=True),
        C.Tensor(C.FRAME, np.dtype(np.uint8), (-1, -1, 3), optional=True),
    ]
    letterbox = C.Tensor(C.LETTERBOX, np.dtype(np.float64), (5,))
    pre_params = {
        "clo_export.imgsz": list(facts.imgsz),
        "clo_export.input_dtype": np.dtype(inp.dtype).name,
        "clo_export.input_name": inp.name,
    }
    configs[pre] = C.python_config(pre, images_in, [inp, letterbox], side, pre_params)

    det_out = [
        C.Tensor(C.DETECTIONS, np.dtype(np.float32), (-1, 6)),
        C.Tensor(C.NUM_DETECTIONS, np.dtype(np.int32), (1,)),
    ]
    post_in = outputs
    post_params = {
        "conf": opts.conf,
        "iou": opts.iou,
        "max_det": opts.max_det,
        "agnostic": opts.agnostic,
        "clo_export.nms": facts.nms,
        "clo_export.imgsz": list(facts.imgsz),
    }
    configs[post] = C.python_config(post, [*post_in, letterbox], det_out, side, post_params)

    steps = [
        (pre, {C.IMAGE: C.IMAGE, C.FRAME: C.FRAME}, {inp.name: inp.name, C.LETTERBOX: C.LETTERBOX}),
        (model, {inp.name: inp.name}, {n: n for n in out_names}),
        (
            post,
            {**{n: n for n in out_names}, C.LETTERBOX: C.LETTERBOX},
            {C.DETECTIONS: C.DETECTIONS, C.NUM_DETECTIONS: C.NUM_DETECTIONS},
        ),
    ]
    ens_params = {
        **meta,
        "clo_export.model": model,
        "clo_export.preprocess": pre,
        "clo_export.postprocess": post,
        "conf": opts.conf,
        "iou": opts.iou,
        "max_det": opts.max_det,
    }
    configs[name] = C.ensemble_config(name, images_in, det_out, s.max_batch, steps, ens_params)
    return configs


# ------------------------------------------------------------------------------------------- writing


def _vendor(dest: Path) -> None:
    """Copy the clo_export modules a Python-backend model imports beside its model.py."""
    pkg = dest / "clo_export"
    for rel in VENDORED:
        target = pkg / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_PACKAGE / rel, target)
    note = f'"""clo-export {__version__} runtime modules, copied here by clo-export triton."""\n'
    (pkg / "__init__.py").write_text(note)
    (pkg / "data" / "__init__.py").write_text(note)


def _ours_or_beside(path: Path, name: str) -> Path:
    """``path`` unless it exists and clo-export did not write it; then ``NAME.<file>`` beside it."""
    if path.exists() and MARK not in path.read_text(errors="replace")[:400]:
        return path.with_name(f"{name}.{path.name}")
    return path


def _template(name: str) -> Path:
    return _PACKAGE / "triton" / "models" / f"{name}.py"


def read_manifest(out: Path) -> set[str]:
    """The files clo-export wrote in the repository ``out`` (relative, '/'-separated); empty when it has no manifest."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    files = data.get("files") if isinstance(data, dict) and SIDECAR_MARKER in data else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def _files(root: Path) -> list[str]:
    """Every file below ``root`` (links included), relative to ``root``'s parent, '/'-separated."""
    return sorted(p.relative_to(root.parent).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _theirs(out: Path, rel: str, ours: set[str]) -> bool:
    """Whether ``out/rel`` exists and clo-export did not write it (not in the manifest, no clo-export header)."""
    path = out / rel
    if not (path.exists() or path.is_symlink()):
        return False
    if rel in ours:
        return False
    if path.is_file() and not path.is_symlink() and path.name == "config.pbtxt":  # a repository older than the manifest
        with open(path, errors="replace") as f:
            return not f.read(200).startswith("# written by clo-export")
    return True


def _check_replace(out: Path, stage: Path, models: list[str], ours: set[str]) -> None:
    """Refuse, before anything in ``out`` changes, a file of the new models at a path holding a file clo-export
    did not write."""
    clash = [rel for m in models for rel in _files(stage / m) if _theirs(out, rel, ours)]
    clash += [m for m in models if (out / m).exists() and not (out / m).is_dir()]
    if clash:
        raise CloExportError(
            f"'{out}' holds {', '.join(clash[:3])}{'…' if len(clash) > 3 else ''}, not written by "
            "clo-export, where the repository's files go; it is kept: move it away or choose another "
            "--name"
        )


def _prune(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to ``stop`` (exclusive) while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _replace_models(out: Path, stage: Path, models: list[str], ours: set[str]) -> tuple[set[str], list[str]]:
    """Move the staged models into ``out``: remove the files an earlier run wrote there, replace them, keep every other
    file; the files now clo-export's and those kept (a folder that holds only kept files is named once)."""
    written: set[str] = set()
    kept: list[str] = []
    for m in models:
        target = out / m
        new = set(_files(stage / m))
        if target.is_dir():
            for rel in _files(target):
                if rel in ours and rel not in new:  # an earlier run's file this run does not write again
                    (out / rel).unlink()
                    _prune((out / rel).parent, out)
        if not target.exists():
            (stage / m).rename(target)
        else:
            for rel in sorted(new):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / rel, out / rel)
            kept += _kept(target, new)
        written |= new
    return written, kept


def _kept(target: Path, new: set[str]) -> list[str]:
    """What is in ``target`` besides ``new``: folders holding none of the new files named as ``folder/``, else files."""
    out, seen = [], set()
    for rel in _files(target):
        if rel in new:
            continue
        parts = rel.split("/")
        for i in range(2, len(parts)):  # the outermost folder with no new file in it
            folder = "/".join(parts[:i])
            if not any(n.startswith(folder + "/") for n in new):
                if folder not in seen:
                    seen.add(folder)
                    out.append(folder + "/")
                break
        else:
            out.append(rel)
    return out


def write_repository(model: str | Path, out: str | Path, opts: RepositoryOptions = RepositoryOptions()) -> Repository:
    """Check everything, then write the repository's four models, README.md and requirements.txt into ``out``.

    ``opts.overwrite`` replaces only the files clo-export wrote (the manifest); every other file is kept and named.
    """
    from clo_export.triton.readme import repository_readme

    model, out = Path(model), Path(out)
    facts = model_facts(model)
    platform = resolve_platform(facts, opts.platform)
    check_options(facts, platform, opts)
    configs = build_configs(facts, platform, opts)
    name = opts.name or default_name(model)
    check_name_length("-o", out)
    check_name_length("--name", out / name, len("..part1234567.XXXXXXXX"))  # its longest use: the staging folder
    targets = {m: out / m for m in configs}
    existing = [m for m, p in targets.items() if p.exists()]
    if existing and not opts.overwrite:
        raise CloExportError(
            f"'{out}' already holds model(s) {', '.join(existing)}; pass --overwrite to replace them "
            "or choose another --name"
        )
    resolved = model.resolve()
    for m in existing:
        if targets[m].resolve() in resolved.parents:
            raise CloExportError(
                f"'{model}' lies inside {targets[m]}, which --overwrite would replace; copy the model elsewhere first"
            )
    created = make_dirs(out)
    ours = read_manifest(out)
    version = str(opts.version)
    try:
        remove_stale_parts(out / name)  # a staging folder of a killed run
        with tempfile.TemporaryDirectory(prefix=part_name(out / name).name + ".", dir=out) as tmp:
            stage = Path(tmp)
            _stage(stage, model, name, version, platform, configs, repository_readme(name, out, platform, facts, opts))
            _check_replace(out, stage, list(configs), ours)
            written, kept = _replace_models(out, stage, list(configs), ours)
            extras = {}
            for extra in ("README.md", "requirements.txt"):
                dest = out / extra if extra in ours else _ours_or_beside(out / extra, name)
                (stage / extra).replace(dest)
                extras[extra] = dest
            written |= {p.relative_to(out).as_posix() for p in extras.values()}
            files = sorted(f for f in ours | written if os.path.lexists(out / f))  # removed ones are no longer ours
            write_text_atomic(out / MANIFEST, json_text({SIDECAR_MARKER: __version__, "files": files}, indent=1))
    except BaseException:
        remove_dirs(created)  # the folders it made, if still empty
        raise
    return Repository(out, name, targets, platform, facts, extras["README.md"], kept)


def _stage(
    stage: Path, model: Path, name: str, version: str, platform: str, configs: dict[str, dict], readme: str
) -> None:
    """Write the four models, README.md and requirements.txt into the staging folder."""
    for m, cfg in configs.items():
        d = stage / m
        (d / version).mkdir(parents=True)
        header = f"# written by clo-export {__version__} triton from {model.name}\n"
        (d / "config.pbtxt").write_text(header + C.to_pbtxt(cfg))
    vdir = stage / f"{name}_model" / version
    shutil.copyfile(model, vdir / ("model.plan" if platform == "tensorrt_plan" else "model.onnx"))
    if platform == "python":
        shutil.copyfile(_template("detector"), vdir / "model.py")
    for step in ("preprocess", "postprocess"):
        sdir = stage / f"{name}_{step}" / version
        shutil.copyfile(_template(step), sdir / "model.py")
        _vendor(sdir)
    (stage / "README.md").write_text(readme)
    (stage / "requirements.txt").write_text(
        f"# {MARK}: packages the Python-backend models import\n"
        + "\n".join(repository_requirements(platform == "python"))
        + "\n"
    )
