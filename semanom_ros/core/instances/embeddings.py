"""Mask averaging: the DINOv2 patch embeddings under an instance mask, area-weighted, as one vector.

Written as matrix products (coverage = Ry @ mask @ Rx.T, then coverage @ patches) so that it runs
where the patch embeddings are: on the GPU in a GPU pipeline, with only the (m, D) result returned.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ImageError
from ..resize import mask_coverage


@dataclass
class MaskEmbeddings:
    """Mask-averaged embeddings of the masks that had any area at patch resolution."""

    vectors: np.ndarray  # (m, D) float32 unit vectors
    index: np.ndarray  # (m,) int: which input mask each vector came from
    weights: np.ndarray  # (m,) float32: mask area in patches (sum of per-patch coverage)
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (mask index, reason)


def patch_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n, H, W) bool -> (n, h, w) float32: the fraction of each patch each mask covers."""
    # OpenCV's INTER_AREA rule (each cell averages the pixels it covers, fractional borders included).
    return mask_coverage(torch.from_numpy(np.ascontiguousarray(masks, bool)), grid).numpy()


def mask_average_embeddings(
    patches: np.ndarray | Any,
    masks: np.ndarray,
    image_size: tuple[int, int] | None = None,
    min_area_patches: float = 1e-6,
) -> MaskEmbeddings:
    """Instance embeddings: the patch embeddings under each mask, area-weighted, L2-normalised.

    ``patches`` is an (h, w, D) grid covering the whole frame, ``masks`` (n, H, W) bool at the
    frame's resolution (``image_size`` (H, W) is checked when given). Each patch is weighted by
    the fraction of its pixels the mask covers, so a small object contributes exactly the
    patches it touches, in proportion. Masks covering less than ``min_area_patches`` patches
    in total (empty masks) and masks whose weighted mean vanishes are not returned; they are
    listed in ``dropped`` with the reason. Raises ImageError for masks of the wrong shape.
    ``patches`` may be a torch tensor (on the GPU): the masks then join it there.
    """
    device = patches.device if isinstance(patches, torch.Tensor) else torch.device("cpu")
    patches_t = torch.as_tensor(patches if isinstance(patches, torch.Tensor) else np.asarray(patches, np.float32))
    patches_t = patches_t.to(device, torch.float32)
    if patches_t.ndim != 3:
        raise ImageError(f"patches must be an (h, w, D) grid, got shape {tuple(patches_t.shape)}")
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ImageError(f"masks must have shape (n, H, W), got {masks.shape}")
    h, w, d = patches_t.shape
    n, height, width = masks.shape
    if image_size is not None and (height, width) != tuple(image_size):
        raise ImageError(
            f"masks are {height}x{width} (HxW) but the frame is {image_size[0]}x{image_size[1]}; "
            "masks must be at the frame's resolution"
        )
    if n and (height < h or width < w):
        raise ImageError(f"masks of {height}x{width} are coarser than the {h}x{w} patch grid they are averaged over")
    if n == 0:
        return MaskEmbeddings(np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    masks_t = torch.from_numpy(np.ascontiguousarray(masks, bool)).to(device, non_blocking=True)
    cover = mask_coverage(masks_t, (h, w)).reshape(n, h * w)
    sums_t = cover @ patches_t.reshape(h * w, d)
    area = cover.sum(dim=1).cpu().numpy()
    sums = sums_t.cpu().numpy()
    norms = np.linalg.norm(sums, axis=1)
    dropped: list[tuple[int, str]] = []
    keep = []
    for i in range(n):
        if area[i] < min_area_patches:
            dropped.append((i, "empty mask"))
        elif norms[i] <= 1e-6 * area[i]:
            dropped.append((i, "patch embeddings under the mask cancel out"))
        else:
            keep.append(i)
    idx = np.asarray(keep, np.int64)
    vectors = (sums[idx] / norms[idx, None]).astype(np.float32) if len(idx) else np.zeros((0, d), np.float32)
    return MaskEmbeddings(vectors, idx, area[idx].astype(np.float32), dropped)


__all__ = ["MaskEmbeddings", "mask_average_embeddings", "patch_coverage"]
