#!/usr/bin/env python
"""Train the bundled demo model: the seed YOLOv5n+CloFormer architecture on procedural shapes, on CPU.

    python tools/make_demo_model.py --minutes 50            # what made clo_export/assets/demo-shapes.pt
    python tools/make_demo_model.py --epochs 30 --imgsz 256 # fixed length (the JSON records the epochs)
    python tools/make_demo_model.py --rewrite               # same weights, re-saved by the current save_yolov5

Scenes come from clo_export.demo.shapes, generated on the fly (epoch e uses seed (seed, e)),
preprocessed by clo_export.data.preprocess.preprocess (the one letterbox), 30% of them rendered
at a non-square aspect and letterboxed so the model sees the grey padding the demo video gets.
Loss, EMA and hyperparameter scaling are YOLOv5's (tools/yolo_loss.py). Validation: a held-out
set (its own seed), NMS at conf 0.001 / IoU 0.6 as YOLOv5's val.py, mAP from clo_export.metrics.

Writes <out>/demo-shapes.pt (YOLOv5 stripped layout, FP16, from the EMA weights) and
<out>/demo-shapes.json (settings, timings, validation mAP of the saved checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

# Other work shares this CPU: OpenMP threads that spin while waiting burn the cores they
# share (measured 10x slower with 2 threads under load). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from yolo_loss import ComputeLoss, ModelEMA, scaled_hyp  # noqa: E402

from clo_export.blocks import load_plugins  # noqa: E402
from clo_export.data.preprocess import preprocess  # noqa: E402
from clo_export.demo.shapes import NAMES, make_dataset, render_scene  # noqa: E402
from clo_export.metrics import evaluate  # noqa: E402
from clo_export.postprocess import nms  # noqa: E402

RECT_P = 0.3  # share of training scenes rendered non-square and letterboxed
RECT_ASPECTS = (0.75, 0.5625, 0.6667)  # short side / long side (4:3, 16:9, 3:2)
TRAIN_OBJECTS = (2, 10)  # shapes per training scene (validation uses render_scene's default 1..8)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_targets(boxes: np.ndarray, info, imgsz: int, index: int) -> np.ndarray:
    """(m, 5) [cls, x1, y1, x2, y2] in scene pixels -> (m, 6) [image, cls, x, y, w, h] normalised to imgsz."""
    if not len(boxes):
        return np.zeros((0, 6), np.float32)
    b = boxes[:, 1:5] * info.ratio + np.array([*info.pad, *info.pad], np.float32)
    out = np.zeros((len(boxes), 6), np.float32)
    out[:, 0] = index
    out[:, 1] = boxes[:, 0]
    out[:, 2] = (b[:, 0] + b[:, 2]) / 2 / imgsz
    out[:, 3] = (b[:, 1] + b[:, 3]) / 2 / imgsz
    out[:, 4] = (b[:, 2] - b[:, 0]) / imgsz
    out[:, 5] = (b[:, 3] - b[:, 1]) / imgsz
    return out


def training_scene(rng: np.random.Generator, imgsz: int) -> tuple[np.ndarray, np.ndarray]:
    """A square scene at imgsz, or (RECT_P of the time) a landscape/portrait one to be letterboxed."""
    if rng.random() < RECT_P:
        short = int(round(imgsz * RECT_ASPECTS[int(rng.integers(len(RECT_ASPECTS)))]))
        size = (short, imgsz) if rng.random() < 0.7 else (imgsz, short)
    else:
        size = (imgsz, imgsz)
    return render_scene(rng, size, n_objects=TRAIN_OBJECTS)


class Scenes(torch.utils.data.IterableDataset):
    """Batches (images (bs, 3, S, S), targets (n, 6)) for epochs [start, stop): epoch e from seed (seed, e)."""

    def __init__(self, seed: int, imgsz: int, batch: int, epoch_size: int, start: int, stop: int):
        self.seed, self.imgsz, self.batch, self.epoch_size, self.start, self.stop = (
            seed,
            imgsz,
            batch,
            epoch_size,
            start,
            stop,
        )

    def __iter__(self):
        for epoch in range(self.start, self.stop):
            rng = np.random.default_rng([self.seed, epoch])
            for _ in range(self.epoch_size // self.batch):
                ims, tgs = [], []
                for i in range(self.batch):
                    img, boxes = training_scene(rng, self.imgsz)
                    x, info = preprocess(img, self.imgsz)
                    ims.append(x)
                    tgs.append(to_targets(boxes, info, self.imgsz, i))
                yield torch.from_numpy(np.concatenate(ims)), torch.from_numpy(np.concatenate(tgs))


def worker_init(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def make_val(seed: int, n: int, imgsz: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, gts = [], []
    for img, boxes in make_dataset(seed, n, (imgsz, imgsz)):
        images.append(img)
        gts.append(boxes)
    return images, gts


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    images: list[np.ndarray],
    gts: list[np.ndarray],
    imgsz: int,
    bs: int = 32,
    definitions: tuple[str, ...] = ("yolov5",),
):
    """mAP of `model` on the validation scenes: preprocess, forward, NMS(0.001, 0.6), evaluate (first definition;
    with several definitions, a dict of results keyed by definition)."""
    was_training = model.training
    model.eval()
    dets = []
    for k in range(0, len(images), bs):
        x = np.concatenate([preprocess(im, imgsz)[0] for im in images[k : k + bs]])
        pred = model(torch.from_numpy(x))
        pred = pred[0] if isinstance(pred, (list, tuple)) else pred
        dets.extend(nms(pred.float().numpy(), conf_thres=0.001, iou_thres=0.6, max_det=300))
    model.train(was_training)
    if len(definitions) > 1:
        return {d: evaluate(dets, gts, definition=d) for d in definitions}
    return evaluate(dets, gts, definition=definitions[0])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """YOLOv5's smart_optimizer groups: weights with decay, BatchNorm weights and biases without."""
    decay, no_decay, bias = [], [], []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if name == "bias":
                bias.append(p)
            elif isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)):
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": bias, "weight_decay": 0.0},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--minutes", type=float, default=None, help="training budget; sets --epochs from the measured speed"
    )
    ap.add_argument("--epochs", type=int, default=None, help="number of epochs (overrides --minutes)")
    ap.add_argument("--epoch-size", type=int, default=4096, help="images per epoch")
    ap.add_argument("--imgsz", type=int, default=256, help="train/val size, a multiple of 128")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.002, help="peak AdamW learning rate")
    ap.add_argument("--lrf", type=float, default=0.05, help="final LR as a fraction of --lr (cosine)")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--warmup-iters", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="training scenes and weight init")
    ap.add_argument("--val-seed", type=int, default=100_000)
    ap.add_argument("--val-n", type=int, default=500)
    ap.add_argument("--val-every", type=int, default=5, help="epochs between quick val runs (on 200 images)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "clo_export" / "assets")
    ap.add_argument("--name", default="demo-shapes")
    ap.add_argument(
        "--rewrite",
        action="store_true",
        help="re-save <out>/<name>.pt with the current checkpoint writer (same weights), re-validate, update the JSON",
    )
    args = ap.parse_args()
    if args.rewrite:
        rewrite(args)
        return
    if args.imgsz % 128:
        ap.error("--imgsz must be a multiple of 128 (the attention's 4x4 windows at stride 32)")
    if args.epochs is None and args.minutes is None:
        ap.error("pass --minutes or --epochs")

    t_start = time.time()
    t_mark = t_start  # reset at iteration 10, when the speed measurement starts
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    load_plugins()
    from clo_export.models.checkpoint import load, save_yolov5
    from clo_export.models.yolo import DEFAULT_CFG, DetectionModel

    model = DetectionModel(DEFAULT_CFG, nc=len(NAMES), names=NAMES)
    det = model.detect
    hyp = scaled_hyp(det.nl, det.nc, args.imgsz)
    model.hyp = hyp
    compute_loss = ComputeLoss(model, hyp)
    ema = ModelEMA(model)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.937, 0.999))
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, hyp {hyp}")

    val_images, val_gts = make_val(args.val_seed, args.val_n, args.imgsz)
    log(f"val set: {len(val_images)} images, {sum(len(g) for g in val_gts)} boxes (seed {args.val_seed})")

    iters_per_epoch = args.epoch_size // args.batch
    epochs = args.epochs
    total_iters = (epochs or 10_000) * iters_per_epoch
    loader = None

    def lr_at(it: int) -> float:
        if it < args.warmup_iters:
            return args.lr * (it + 1) / args.warmup_iters
        q = (it - args.warmup_iters) / max(1, total_iters - args.warmup_iters)
        return args.lr * (args.lrf + (1 - args.lrf) * 0.5 * (1 + math.cos(math.pi * min(q, 1.0))))

    def batches(start_epoch: int, stop_epoch: int):
        ds = Scenes(args.seed, args.imgsz, args.batch, args.epoch_size, start_epoch, stop_epoch)
        return iter(
            torch.utils.data.DataLoader(
                ds,
                batch_size=None,
                num_workers=args.workers,
                worker_init_fn=worker_init if args.workers else None,
                prefetch_factor=4 if args.workers else None,
            )
        )

    model.train()
    it, images_seen, history = 0, 0, []
    t_train = time.time()
    epoch = 0
    while epochs is None or epoch < epochs:
        if loader is None:
            loader = batches(epoch, epochs if epochs is not None else 10_000)
        t_epoch, sums, n_b = time.time(), torch.zeros(3), 0
        for _ in range(iters_per_epoch):
            imgs, targets = next(loader)
            lr = lr_at(it)
            for gi, g in enumerate(opt.param_groups):
                g["lr"] = lr
                if it < args.warmup_iters:
                    g["betas"] = (0.8 + (0.937 - 0.8) * it / args.warmup_iters, 0.999)
            pred = model(imgs)
            loss, items = compute_loss(pred, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            opt.step()
            ema.update(model)
            it += 1
            images_seen += imgs.shape[0]
            sums += items
            n_b += 1
            if it % 50 == 0:
                el = time.time() - t_epoch
                m = sums / n_b
                log(
                    f"epoch {epoch} iter {it} loss {m.sum():.4f} (box {m[0]:.4f} obj {m[1]:.4f} cls {m[2]:.4f}) "
                    f"lr {lr:.5f} {n_b * args.batch / el:.1f} img/s"
                )
            if epochs is None and it == 40:
                # Fix the schedule from the measured speed (iterations 10..40) and the budget left.
                speed = 30 * args.batch / (time.time() - t_mark)
                budget = args.minutes * 60 - (time.time() - t_start) - 60  # leave time for the final val/save
                budget *= 0.97  # periodic val
                epochs = max(1, int((budget * speed + images_seen) // args.epoch_size))
                total_iters = epochs * iters_per_epoch
                log(
                    f"measured {speed:.1f} img/s -> {epochs} epochs of {args.epoch_size} images ({total_iters} "
                    f"iterations)"
                )
            if it == 10:
                t_mark = time.time()
            if epochs is not None and it >= epochs * iters_per_epoch:
                break
        m = sums / max(n_b, 1)
        rec = {
            "epoch": epoch,
            "loss": float(m.sum()),
            "box": float(m[0]),
            "obj": float(m[1]),
            "cls": float(m[2]),
            "img_s": n_b * args.batch / (time.time() - t_epoch),
            "minutes": (time.time() - t_train) / 60,
        }
        if (epoch + 1) % args.val_every == 0 and epoch + 1 < epochs:
            r = validate(ema.ema, val_images[:200], val_gts[:200], args.imgsz)
            rec.update(val200_map50=r.map50, val200_map50_95=r.map50_95)
        history.append(rec)
        if args.minutes is not None and args.epochs is None and epoch + 1 < epochs:
            # Re-plan the remaining epochs from the average speed so far (other work shares the CPU).
            speed = images_seen / (time.time() - t_train)
            left = (t_start + args.minutes * 60 - 60 - time.time()) * speed
            new_epochs = max(epoch + 1, epoch + 1 + int(left // args.epoch_size))
            if new_epochs != epochs:
                log(f"re-planned at {speed:.1f} img/s: {epochs} -> {new_epochs} epochs")
                epochs, total_iters = new_epochs, new_epochs * iters_per_epoch
        log(
            f"epoch {epoch} done: loss {rec['loss']:.4f}, {rec['img_s']:.1f} img/s, {rec['minutes']:.1f} min"
            + (
                f", val(200) mAP50 {rec['val200_map50']:.4f} mAP50-95 {rec['val200_map50_95']:.4f}"
                if "val200_map50" in rec
                else ""
            )
        )
        epoch += 1
    train_s = time.time() - t_train

    r_ema = validate(ema.ema, val_images, val_gts, args.imgsz)
    log(
        f"EMA model, val({len(val_images)}): mAP50 {r_ema.map50:.4f} mAP50-95 {r_ema.map50_95:.4f} P "
        f"{r_ema.precision:.3f} R {r_ema.recall:.3f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    pt = args.out / f"{args.name}.pt"
    final = ema.ema
    final.hyp = hyp
    final.names = model.names
    opt_record = {
        "imgsz": args.imgsz,
        "epochs": epochs,
        "batch_size": args.batch,
        "seed": args.seed,
        "optimizer": "AdamW",
        "data": "clo_export.demo.shapes",
        "names": NAMES,
    }
    save_yolov5(final, pt, layout="stripped", opt=opt_record)
    # Score what was written (FP16 weights, reloaded through the project's own loader).
    loaded = load(pt)
    r = validate(loaded.model, val_images, val_gts, args.imgsz)
    log(f"saved {pt} ({pt.stat().st_size / 1e6:.2f} MB); reloaded: mAP50 {r.map50:.4f} mAP50-95 {r.map50_95:.4f}")
    info = {
        "model": pt.name,
        "architecture": "yolov5n-cloformer.yaml (seed), nc=5",
        "names": NAMES,
        "imgsz": args.imgsz,
        "data": {
            "generator": "clo_export.demo.shapes.render_scene",
            "train_seed": args.seed,
            "epoch_seed": "numpy default_rng([train_seed, epoch])",
            "rect_share": RECT_P,
            "rect_aspects": list(RECT_ASPECTS),
            "objects_per_scene": list(TRAIN_OBJECTS),
        },
        "training": {
            "epochs": epochs,
            "epoch_size": args.epoch_size,
            "batch_size": args.batch,
            "iterations": it,
            "images_seen": images_seen,
            "optimizer": "AdamW",
            "lr0": args.lr,
            "lrf": args.lrf,
            "schedule": "linear warmup then cosine",
            "warmup_iters": args.warmup_iters,
            "weight_decay": args.weight_decay,
            "betas": [0.937, 0.999],
            "grad_clip": 10.0,
            "ema": "YOLOv5 ModelEMA decay 0.9999 tau 2000",
            "hyp": hyp,
            "threads": args.threads,
            "data_workers": args.workers,
            "wall_time_s": round(train_s, 1),
            "total_wall_time_s": round(time.time() - t_start, 1),
        },
        "validation": {
            "definition": "yolov5",
            "seed": args.val_seed,
            "images": len(val_images),
            "boxes": int(sum(len(g) for g in val_gts)),
            "nms": {"conf": 0.001, "iou": 0.6, "max_det": 300},
            "map50": round(r.map50, 4),
            "map50_95": round(r.map50_95, 4),
            "precision": round(r.precision, 4),
            "recall": round(r.recall, 4),
            "ap50_per_class": {NAMES[k]: round(v, 4) for k, v in r.ap50_per_class.items()},
            "ema_fp32_map50": round(r_ema.map50, 4),
            "ema_fp32_map50_95": round(r_ema.map50_95, 4),
        },
        "checkpoint": {
            "layout": "YOLOv5 stripped",
            "dtype": "float16",
            "bytes": pt.stat().st_size,
            "sha256": loaded.sha256,
        },
        "environment": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "command": " ".join(sys.argv),
        "history": history,
    }
    js = args.out / f"{args.name}.json"
    js.write_text(json.dumps(info, indent=1) + "\n")
    log(f"wrote {js}; training {train_s / 60:.1f} min, total {(time.time() - t_start) / 60:.1f} min")


def rewrite(args: argparse.Namespace) -> None:
    """Re-save the checkpoint with the current save_yolov5 (identical FP16 weights) and re-score it."""
    torch.set_num_threads(args.threads)
    load_plugins()
    from clo_export.models.checkpoint import load, plain, read_checkpoint, save_yolov5

    pt, js = args.out / f"{args.name}.pt", args.out / f"{args.name}.json"
    info = json.loads(js.read_text())
    old = read_checkpoint(pt)
    loaded = load(pt)  # read completely before the file is replaced
    model = loaded.model
    model.hyp = plain(getattr(old["model"], "hyp", info["training"]["hyp"]))
    old_sd = {k: v.clone() for k, v in old["model"].state_dict().items()}
    save_yolov5(model, pt, layout="stripped", opt=old.get("opt"))
    new = read_checkpoint(pt)
    new_sd = new["model"].state_dict()
    if old_sd.keys() != new_sd.keys() or not all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd):
        raise SystemExit(f"{pt}: re-saved weights differ from the original; not rewritten as intended")
    val = info["validation"]
    images, gts = make_val(val["seed"], val["images"], info["imgsz"])
    scores = validate(load(pt).model, images, gts, info["imgsz"], definitions=("yolov5", "coco"))
    val["by_definition"] = {
        d: {"map50": round(r.map50, 4), "map50_95": round(r.map50_95, 4)} for d, r in scores.items()
    }
    log(
        f"rewrote {pt} ({pt.stat().st_size / 1e6:.2f} MB), identical weights: mAP50/mAP50-95 "
        + ", ".join(f"{d} {r.map50:.4f}/{r.map50_95:.4f}" for d, r in scores.items())
    )
    previous = {k: info["checkpoint"][k] for k in ("bytes", "sha256")}
    info["checkpoint"].update(bytes=pt.stat().st_size, sha256=load(pt).sha256)
    info.setdefault("rewrites", []).append(
        {
            "why": "saved in the layout an unmodified YOLOv5 clone loads (models.common paths, Detect grids, "
            "best_fitness None, no NumPy values); identical FP16 weights, so the recorded mAP is unchanged. "
            "validation.map50/map50_95 were computed before clo_export.metrics had definitions (greedy "
            "matching, COCO 101-point steps); by_definition gives YOLOv5 val.py's and COCO's",
            "previous": previous,
            "command": " ".join(sys.argv),
        }
    )
    js.write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
