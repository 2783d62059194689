"""Frame resizing as matrix products, so it runs where the tensors are (GPU or CPU) and agrees with OpenCV.

Shrinking uses OpenCV's ``INTER_AREA`` rule (each output pixel is the area-weighted mean of the
input pixels it covers, fractional borders included), written as ``Ry @ image @ Rx.T`` with two
small weight matrices; on a GPU that is two matrix products per frame instead of a host resize and
a float32 upload. The same weights give the fraction of each patch a mask covers (instance mode).
Enlarging uses bilinear interpolation with half-pixel centres, OpenCV's ``INTER_LINEAR``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=64)
def area_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of OpenCV's INTER_AREA for one axis (out_size <= in_size).

    Output pixel ``o`` covers input span ``[o * s, (o + 1) * s)`` with ``s = in_size / out_size``;
    its weight on input pixel ``i`` is the overlap of that span with ``[i, i + 1)``, divided by ``s``.
    """
    if not 0 < out_size <= in_size:
        raise ValueError(f"area weights shrink: out_size {out_size} must be in [1, {in_size}]")
    scale = in_size / out_size
    starts = np.arange(out_size, dtype=np.float64)[:, None] * scale
    pixels = np.arange(in_size, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(starts + scale, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return (overlap / scale).astype(np.float32)


def area_weights_tensor(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(area_weights(in_size, out_size)).to(device)


def resize_chw(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float tensor -> (C, h, w): area weights when shrinking both axes, else bilinear.

    Mixed cases (one axis shrinks, the other grows) use bilinear with antialiasing; callers that
    need OpenCV-identical output keep those on the host (:meth:`FeatureExtractor.preprocess`).
    """
    out_h, out_w = size
    _, in_h, in_w = image.shape
    if out_h <= in_h and out_w <= in_w:
        ry = area_weights_tensor(in_h, out_h, image.device)
        rx = area_weights_tensor(in_w, out_w, image.device)
        return torch.matmul(torch.matmul(ry, image), rx.T)
    grows = out_h >= in_h and out_w >= in_w
    return torch.nn.functional.interpolate(
        image[None], size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=not grows
    )[0]


def mask_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(n, H, W) masks -> (n, h, w) float32: the fraction of each grid cell each mask covers."""
    n, height, width = masks.shape
    ry = area_weights_tensor(height, grid[0], masks.device)
    rx = area_weights_tensor(width, grid[1], masks.device)
    return torch.matmul(torch.matmul(ry, masks.to(torch.float32)), rx.T)


__all__ = ["area_weights", "area_weights_tensor", "mask_coverage", "resize_chw"]
