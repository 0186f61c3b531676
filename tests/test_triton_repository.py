"""clo-export triton: every config.pbtxt parses into Triton's ModelConfig, per platform variant; bad options refused.

The ONNX fixtures are real ONNX files with the I/O signatures and metadata of clo-export's exports
(FP32/FP16/INT8 Q/DQ, fixed or dynamic batch, in-graph NMS); the engine fixture is a plan file with a
real sidecar (no TensorRT here: the writer only copies the plan and reads the sidecar).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from clo_export.artifacts import ModelMeta, write_metadata
from clo_export.cli.main import app
from clo_export.engine.sidecar import EngineSidecar
from clo_export.errors import CloExportError
from clo_export.triton import config as C
from clo_export.triton.repository import RepositoryOptions, write_repository

NAMES = {0: "circle", 1: "square", 2: "triangle"}
ANCHORS = 252  # 3 anchors x (8x8 + 4x4 + 2x2) cells at 64x64, strides 8/16/32
NO = 5 + len(NAMES)


def make_onnx(path, batch="batch", dtype=TensorProto.FLOAT, precision="fp32", nms=False):
    """An ONNX whose inputs, outputs and metadata look like clo-export's (the graph only casts the input)."""
    b = batch
    inp = helper.make_tensor_value_info("images", dtype, [b, 3, 64, 64])
    if nms:
        outs = [
            helper.make_tensor_value_info("num_dets", TensorProto.INT32, [b, 1]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [b, 100, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, 100]),
            helper.make_tensor_value_info("classes", TensorProto.INT32, [b, 100]),
        ]
        nodes = [helper.make_node("Cast", ["images"], [o.name], to=o.type.tensor_type.elem_type) for o in outs]
    else:
        outs = [helper.make_tensor_value_info("output0", dtype, [b, ANCHORS, NO])]
        nodes = [helper.make_node("Identity", ["images"], ["output0"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [inp], outs), opset_imports=[helper.make_opsetid("", 17)])
    write_metadata(
        model,
        ModelMeta(
            stride=32, names=NAMES, imgsz=(64, 64), precision=precision, nms=nms, dynamic_batch=isinstance(batch, str)
        ),
    )
    onnx.save(model, str(path))
    return path


def make_engine(tmp_path, profile=((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)), with_onnx=True):
    """A plan file with the sidecar clo-export trt writes (and the ONNX it came from, beside it)."""
    onnx_path = make_onnx(tmp_path / "det.onnx", precision="fp16", dtype=TensorProto.FLOAT16) if with_onnx else None
    engine = tmp_path / "det.fp16.engine"
    engine.write_bytes(b"plan bytes")
    shape = (-1, 3, 64, 64) if profile else (1, 3, 64, 64)
    EngineSidecar(
        "10.3.0",
        "NVIDIA A10",
        (8, 6),
        "fp16",
        "images",
        shape,
        ("output0",),
        tuple(NAMES.values()),
        32,
        (64, 64),
        "det.onnx",
        "0" * 64,
        1.0,
        profile,
    ).write(engine)
    return engine, onnx_path


def parse(path) -> model_config_pb2.ModelConfig:
    """config.pbtxt -> ModelConfig; text_format refuses any field the schema does not know."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def params(cfg) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def configs(repo, name) -> dict[str, model_config_pb2.ModelConfig]:
    return {
        m: parse(repo / m / "config.pbtxt")
        for m in (name, f"{name}_preprocess", f"{name}_model", f"{name}_postprocess")
    }


VARIANTS = [
    # (id, onnx kwargs, platform, serving)
    ("fp32-onnxruntime-gpu", {}, None, C.Serving(8, (4, 8), 100, 2, "gpu")),
    ("fp32-onnxruntime-cpu", {}, "onnxruntime_onnx", C.Serving(4, (), 0, 1, "cpu")),
    ("fp16-onnxruntime", {"dtype": TensorProto.FLOAT16, "precision": "fp16"}, None, C.Serving(8)),
    ("int8-qdq-python", {"precision": "int8"}, "python", C.Serving(8, (4,), 2000)),
    ("static-batch1", {"batch": 1}, None, C.Serving(1)),
    ("in-graph-nms", {"nms": True}, None, C.Serving(4)),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_onnx_variants_parse_into_model_config(tmp_path, variant):
    _, kw, platform, serving = variant
    model = make_onnx(tmp_path / "det.onnx", **kw)
    repo = write_repository(model, tmp_path / "repo", RepositoryOptions("det", platform, serving, conf=0.3))
    cfgs = configs(tmp_path / "repo", "det")
    det = cfgs["det_model"]
    if platform == "python":
        assert det.backend == "python" and not det.platform
        assert (repo.models["det_model"] / "1" / "model.py").is_file()
        assert det.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    else:
        assert det.platform == "onnxruntime_onnx"
        kind = (
            model_config_pb2.ModelInstanceGroup.KIND_GPU
            if serving.kind in (None, "gpu")
            else model_config_pb2.ModelInstanceGroup.KIND_CPU
        )
        assert det.instance_group[0].kind == kind and det.instance_group[0].count == serving.instances
    assert (repo.models["det_model"] / "1" / "model.onnx").read_bytes() == model.read_bytes()
    if kw.get("batch") == 1:  # Triton batches only a model whose first dimension is -1
        assert det.max_batch_size == 0 and list(det.input[0].dims) == [1, 3, 64, 64]
        assert list(det.output[0].dims) == [1, ANCHORS, NO]
    else:
        assert det.max_batch_size == serving.max_batch
        assert list(det.input[0].dims) == [3, 64, 64]  # no batch dimension
        assert [o.name for o in det.output] == (
            ["num_dets", "boxes", "scores", "classes"] if kw.get("nms") else ["output0"]
        )
        assert list(det.output[-1].dims) == ([100] if kw.get("nms") else [ANCHORS, NO])
    fp16 = kw.get("dtype") == TensorProto.FLOAT16
    assert det.input[0].data_type == (model_config_pb2.TYPE_FP16 if fp16 else model_config_pb2.TYPE_FP32)
    if serving.max_batch > 1:
        assert list(det.dynamic_batching.preferred_batch_size) == list(serving.preferred_batch)
        assert det.dynamic_batching.max_queue_delay_microseconds == serving.queue_delay_us
    else:
        assert not det.HasField("dynamic_batching")
    assert not det.optimization.cuda.graphs  # CUDA graphs are a TensorRT option
    p = params(det)
    assert json.loads(p["clo_export.names"]) == {str(k): v for k, v in NAMES.items()}
    assert json.loads(p["clo_export.imgsz"]) == [64, 64] and p["clo_export.precision"] == kw.get("precision", "fp32")

    pre, post, ens = cfgs["det_preprocess"], cfgs["det_postprocess"], cfgs["det"]
    assert pre.backend == post.backend == "python"
    assert [(i.name, i.optional) for i in pre.input] == [("IMAGE", True), ("FRAME", True)]
    assert pre.output[0].data_type == det.input[0].data_type  # preprocessing writes what the detector takes
    assert params(post)["conf"] == "0.3"
    assert ens.platform == "ensemble" and ens.max_batch_size == serving.max_batch
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["det_preprocess", "det_model", "det_postprocess"]
    assert [o.name for o in ens.output] == ["DETECTIONS", "NUM_DETECTIONS"]
    assert params(ens)["clo_export.model"] == "det_model"
    for step in ("det_preprocess", "det_postprocess"):  # our preprocessing and NMS travel with the model
        vendored = repo.models[step] / "1" / "clo_export"
        assert (vendored / "data" / "preprocess.py").is_file() and (vendored / "postprocess.py").is_file()
    assert "docker run" in (tmp_path / "repo" / "README.md").read_text()


def test_engine_config_has_cuda_graphs_and_build_facts(tmp_path):
    engine, _ = make_engine(tmp_path)
    write_repository(engine, tmp_path / "repo", RepositoryOptions("det", None, C.Serving(8, (4, 8), 100)))
    det = configs(tmp_path / "repo", "det")["det_model"]
    assert det.platform == "tensorrt_plan" and det.max_batch_size == 8
    assert det.optimization.cuda.graphs
    assert sorted(g.batch_size for g in det.optimization.cuda.graph_spec) == [4, 8]
    assert det.input[0].data_type == model_config_pb2.TYPE_FP16 and list(det.input[0].dims) == [3, 64, 64]
    assert [o.name for o in det.output] == ["output0"]
    assert params(det)["clo_export.tensorrt_version"] == "10.3.0"
    assert (tmp_path / "repo" / "det_model" / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert "TensorRT 10.3.0" in (tmp_path / "repo" / "README.md").read_text()


def test_engine_without_cuda_graphs(tmp_path):
    engine, _ = make_engine(tmp_path)
    write_repository(engine, tmp_path / "repo", RepositoryOptions("det", None, C.Serving(4, (), 0, 1, "gpu", False)))
    assert not configs(tmp_path / "repo", "det")["det_model"].optimization.cuda.graphs


def test_fixed_batch_engine_is_a_non_batching_model(tmp_path):
    engine, _ = make_engine(tmp_path, profile=None)
    write_repository(engine, tmp_path / "repo", RepositoryOptions("det"))
    cfgs = configs(tmp_path / "repo", "det")
    det = cfgs["det_model"]
    assert det.max_batch_size == 0 and list(det.input[0].dims) == [1, 3, 64, 64]
    assert det.optimization.cuda.graphs and not det.optimization.cuda.graph_spec
    assert cfgs["det"].max_batch_size == 1


def test_engine_needs_its_onnx_beside_it(tmp_path):
    engine, _ = make_engine(tmp_path, with_onnx=False)
    with pytest.raises(CloExportError, match="'det.onnx', the ONNX 'det.fp16.engine' was built from, is not beside it"):
        write_repository(engine, tmp_path / "repo", RepositoryOptions("det"))


@pytest.mark.parametrize(
    "case, match",
    [
        ("static-onnx-batch8", "--dynamic-batch"),
        ("engine-profile-short", "--batch-range 1,16,16"),
        ("static-engine", "--batch-range 1,4,4"),
        ("engine-on-cpu", "GPU only"),
        ("python-on-gpu", "drop --kind gpu"),
        ("engine-as-python", "pass the .onnx"),
        ("bad-preferred", "between 1 and --max-batch"),
        ("bad-name", "not a Triton model name"),
    ],
)
def test_refused_with_how_to_fix(tmp_path, case, match):
    static = make_onnx(tmp_path / "static.onnx", batch=1)
    dynamic = make_onnx(tmp_path / "dyn.onnx")
    engine, _ = make_engine(tmp_path)
    (tmp_path / "s").mkdir()
    static_engine, _ = make_engine(tmp_path / "s", profile=None)
    model, opts = {
        "static-onnx-batch8": (static, RepositoryOptions("d", serving=C.Serving(8))),
        "engine-profile-short": (engine, RepositoryOptions("d", serving=C.Serving(16))),
        "static-engine": (static_engine, RepositoryOptions("d", serving=C.Serving(4))),
        "engine-on-cpu": (engine, RepositoryOptions("d", serving=C.Serving(1, kind="cpu"))),
        "python-on-gpu": (dynamic, RepositoryOptions("d", "python", C.Serving(1, kind="gpu"))),
        "engine-as-python": (engine, RepositoryOptions("d", "python")),
        "bad-preferred": (dynamic, RepositoryOptions("d", serving=C.Serving(4, (8,)))),
        "bad-name": (dynamic, RepositoryOptions("a/b")),
    }[case]
    with pytest.raises(CloExportError, match=match) as e:
        write_repository(model, tmp_path / "repo", opts)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "repo").exists()  # nothing written before the checks pass


def test_existing_models_kept_unless_overwrite_and_input_never_replaced(tmp_path):
    model = make_onnx(tmp_path / "det.onnx")
    repo = tmp_path / "repo"
    write_repository(model, repo, RepositoryOptions("det", serving=C.Serving(2)))
    (repo / "other").mkdir()  # another model of the user's
    with pytest.raises(CloExportError, match="--overwrite"):
        write_repository(model, repo, RepositoryOptions("det", serving=C.Serving(4)))
    assert parse(repo / "det_model" / "config.pbtxt").max_batch_size == 2
    write_repository(model, repo, RepositoryOptions("det", serving=C.Serving(4), overwrite=True))
    assert parse(repo / "det_model" / "config.pbtxt").max_batch_size == 4
    assert (repo / "other").is_dir() and not list(repo.glob(".*part*"))
    inside = repo / "det_model" / "1" / "model.onnx"
    with pytest.raises(CloExportError, match="lies inside"):
        write_repository(inside, repo, RepositoryOptions("det", overwrite=True))
    assert inside.is_file()


def test_cli_writes_repository_and_picks_max_batch_from_the_model(tmp_path):
    dynamic, static = make_onnx(tmp_path / "dyn.onnx"), make_onnx(tmp_path / "static.onnx", batch=1)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "triton",
            str(dynamic),
            "-o",
            str(tmp_path / "repo"),
            "--name",
            "cams",
            "--preferred-batch",
            "2,4",
            "--instances",
            "2",
            "--kind",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    det = parse(tmp_path / "repo" / "cams_model" / "config.pbtxt")
    assert det.max_batch_size == 8 and list(det.dynamic_batching.preferred_batch_size) == [2, 4]
    assert det.instance_group[0].count == 2
    r = runner.invoke(app, ["triton", str(static), "-o", str(tmp_path / "repo"), "--name", "one"])
    assert r.exit_code == 0, r.output
    assert parse(tmp_path / "repo" / "one_model" / "config.pbtxt").max_batch_size == 0  # fixed batch 1: non-batching
    assert parse(tmp_path / "repo" / "one" / "config.pbtxt").max_batch_size == 1
    r = runner.invoke(app, ["triton", str(static), "-o", str(tmp_path / "repo"), "--name", "x", "--max-batch", "4"])
    assert r.exit_code == 1 and "--dynamic-batch" in r.output


def test_pbtxt_escapes_strings():
    text = C.to_pbtxt({"name": 'a "quoted" \\ name', "parameters": C.parameters({"k": {"0": "é"}})})
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.name == 'a "quoted" \\ name'
    assert json.loads(cfg.parameters["k"].string_value) == {"0": "é"}
    assert np.dtype(np.float64) in C.TRITON_TYPES
