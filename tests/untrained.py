"""Untrained detectors whose detections follow the image (test models and the pipeline benchmark)."""

from __future__ import annotations


def follow_the_image(model, x, obj_bias: float, cls_bias: float) -> None:
    """Make an untrained DetectionModel react to images like a trained one, in place.

    An untrained model's activations shrink layer by layer until its output no longer depends on
    the image: BatchNorm statistics measured on the batch ``x`` (variances floored at 0.1, keeping
    the net well conditioned) fix that; score weights scaled by 20 make scores follow the image,
    and raising the objectness/class biases sets how many boxes pass the thresholds.
    """
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():
        model.train()
        model(x)
        model.eval()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.clamp_(min=0.1)
        for conv in model.detect.m:
            conv.weight.view(model.detect.na, model.detect.no, -1)[:, 4:].mul_(20.0)
            b = conv.bias.view(model.detect.na, -1)
            b[:, 4] += obj_bias
            b[:, 5:] += cls_bias
