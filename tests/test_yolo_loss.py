"""tools/yolo_loss.py: YOLOv5's target assignment on a hand-built case, CIoU, and a loss that learns."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def yl():
    spec = importlib.util.spec_from_file_location("yolo_loss", TOOLS / "yolo_loss.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_model(anchors: list[list[list[float]]], nc: int) -> SimpleNamespace:
    """Just what ComputeLoss reads: model.model[-1] with anchors (grid units), na, nc, nl."""
    a = torch.tensor(anchors)
    return SimpleNamespace(model=[SimpleNamespace(anchors=a, na=a.shape[1], nc=nc, nl=a.shape[0])])


def test_scaled_hyp(yl) -> None:
    h = yl.scaled_hyp(nl=3, nc=5, imgsz=320)
    assert h["box"] == pytest.approx(0.05)
    assert h["cls"] == pytest.approx(0.5 * 5 / 80)
    assert h["obj"] == pytest.approx(0.25)
    assert h["anchor_t"] == 4.0


def test_build_targets_hand_case(yl) -> None:
    # One 8x8 level; anchors 1x1, 2x2, 8x8 grid cells. A 2x2-cell target at (2.4, 4.8) cells:
    # ratios 2, 1, 4 -> anchors 0 and 1 match (< anchor_t = 4), anchor 2 does not.
    # x fraction 0.4 < 0.5 -> also the left cell; y fraction 0.8 -> the cell below (from the far side).
    loss = yl.ComputeLoss(fake_model([[[1, 1], [2, 2], [8, 8]]], nc=2), yl.scaled_hyp(1, 2, 640))
    p = [torch.zeros(1, 3, 8, 8, 7)]
    targets = torch.tensor([[0, 1, 2.4 / 8, 4.8 / 8, 0.25, 0.25]])
    tcls, tbox, indices, anch = loss.build_targets(p, targets)
    b, a, gj, gi = indices[0]
    got = sorted(
        zip(a.tolist(), gi.tolist(), gj.tolist(), *(np.round(tbox[0][:, k].numpy(), 4).tolist() for k in range(4)))
    )
    want = sorted(
        (ai, gi_, gj_, ox, oy, 2.0, 2.0)
        for ai in (0, 1)
        for gi_, gj_, ox, oy in ((2, 4, 0.4, 0.8), (1, 4, 1.4, 0.8), (2, 5, 0.4, -0.2))
    )
    assert got == [tuple(pytest.approx(v, abs=1e-4) for v in w) for w in want]
    assert b.tolist() == [0] * 6 and tcls[0].tolist() == [1] * 6
    assert anch[0].tolist() == [[1, 1], [2, 2]] * 3


def test_build_targets_edges_and_ratio(yl) -> None:
    loss = yl.ComputeLoss(fake_model([[[1, 1], [2, 2], [8, 8]]], nc=2), yl.scaled_hyp(1, 2, 640))
    p = [torch.zeros(2, 3, 8, 8, 7)]
    # Near the top-left corner (cell 0): no neighbours (gxy > 1 fails); size 8 cells: only anchor 2.
    targets = torch.tensor([[1, 0, 0.2 / 8, 0.3 / 8, 1.0, 1.0]])
    _, tbox, indices, _ = loss.build_targets(p, targets)
    b, a, gj, gi = indices[0]
    assert (b.tolist(), a.tolist(), gi.tolist(), gj.tolist()) == ([1], [2], [0], [0])
    # No targets: empty assignments, and the loss is pure objectness.
    _, _, indices, _ = loss.build_targets(p, torch.zeros(0, 6))
    b = indices[0][0]
    assert b.numel() == 0
    total, items = loss(p, torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0


def test_ciou(yl) -> None:
    box = torch.tensor([[5.0, 5.0, 2.0, 4.0]])
    assert yl.bbox_iou(box, box).item() == pytest.approx(1.0, abs=1e-5)
    far = torch.tensor([[20.0, 20.0, 2.0, 4.0]])
    assert yl.bbox_iou(box, far).item() < 0  # CIoU goes below 0 for disjoint boxes
    shifted = torch.tensor([[5.5, 5.0, 2.0, 4.0]])
    iou = (1.5 * 4) / (2 * 8 - 1.5 * 4)
    assert yl.bbox_iou(box, shifted).item() < iou  # the centre-distance penalty


def tiny_cfg(seed_cfg: dict) -> dict:
    """A few strided Convs into the seed's Detect (same anchors, P3-P5): fast to train a few steps."""
    return {
        "nc": 5,
        "depth_multiple": 1.0,
        "width_multiple": 1.0,
        "anchors": seed_cfg["anchors"],
        "backbone": [
            [-1, 1, "Conv", [8, 3, 2]],
            [-1, 1, "Conv", [16, 3, 2]],
            [-1, 1, "Conv", [16, 3, 2]],
            [-1, 1, "Conv", [16, 3, 2]],
            [-1, 1, "Conv", [16, 3, 2]],
        ],
        "head": [[[2, 3, 4], 1, "Detect", ["nc", "anchors"]]],
    }


def test_loss_finite_and_decreasing(yl, seed_cfg) -> None:
    from clo_export.demo.shapes import make_dataset
    from clo_export.models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(tiny_cfg(seed_cfg)).train()
    assert model.stride.tolist() == [8, 16, 32]
    loss_fn = yl.ComputeLoss(model, yl.scaled_hyp(3, 5, 128))
    ims, tgs = [], []
    for i, (img, boxes) in enumerate(make_dataset(0, 2, (128, 128), n_objects=(2, 3))):
        ims.append(torch.from_numpy(img[..., ::-1].transpose(2, 0, 1).copy()).float() / 255)
        xyxy = boxes[:, 1:] / 128
        tgs.append(
            np.c_[np.full(len(boxes), i), boxes[:, 0], (xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]]
        )
    x, targets = torch.stack(ims), torch.from_numpy(np.concatenate(tgs)).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = yl.ModelEMA(model)
    losses = []
    for _ in range(6):
        loss, items = loss_fn(model(x), targets)
        assert torch.isfinite(loss) and items.shape == (3,) and loss.item() > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses
    assert ema.updates == 6
