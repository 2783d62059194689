"""From a patch score grid to a full-resolution map, a filtered binary mask and an overlay."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Component:
    """A connected region of above-threshold pixels that survived the area filter."""

    label: int  # value of its pixels in the label image (1..n)
    area_px: int
    bbox: tuple[int, int, int, int]  # x, y, width, height
    peak_score: float
    mean_score: float
    centroid: tuple[float, float]  # x, y


def upsample_scores(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) grid -> (H, W) float32 map by bilinear interpolation (patch centres line up)."""
    height, width = size
    return cv2.resize(grid.astype(np.float32, copy=False), (width, height), interpolation=cv2.INTER_LINEAR)


def fuse_view_scores(
    score_map: np.ndarray, view_grids: list[tuple[tuple[int, int, int, int], np.ndarray]]
) -> np.ndarray:
    """Per-pixel maximum of a frame's score map and its crop views' grids, each upsampled into its box.

    ``view_grids``: ((top, bottom, left, right) in pixels, (h, w) grid). Max, not mean: a small
    obstacle only the finer view resolves must not be averaged away by the coarse one.
    """
    fused = score_map
    for (top, bottom, left, right), grid in view_grids:
        region = fused[top:bottom, left:right]
        np.maximum(region, upsample_scores(grid, (bottom - top, right - left)), out=region)
    return fused


def threshold_components(
    score_map: np.ndarray, threshold: float, min_component_area_px: int
) -> tuple[np.ndarray, np.ndarray, list[Component]]:
    """Threshold and drop components smaller than ``min_component_area_px``.

    Returns (mask (H, W) bool, labels (H, W) uint16 with 0 = background, components), the
    surviving components relabelled 1..n by decreasing peak score.
    """
    raw = (score_map > threshold).astype(np.uint8)
    labels = np.zeros(score_map.shape, np.uint16)
    if not raw.any():
        return raw.astype(bool), labels, []
    n, cc, stats, centroids = cv2.connectedComponentsWithStats(raw, connectivity=8)
    found: list[tuple[float, int]] = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] >= min_component_area_px:
            x, y, w, h = (int(v) for v in stats[i, :4])
            found.append((float(score_map[y : y + h, x : x + w][cc[y : y + h, x : x + w] == i].max()), i))
    found.sort(reverse=True)
    components: list[Component] = []
    for new_label, (peak, i) in enumerate(found[: np.iinfo(np.uint16).max], start=1):
        x, y, w, h, area = (int(v) for v in stats[i])
        region = cc[y : y + h, x : x + w] == i
        labels[y : y + h, x : x + w][region] = new_label
        components.append(
            Component(
                label=new_label,
                area_px=area,
                bbox=(x, y, w, h),
                peak_score=peak,
                mean_score=float(score_map[y : y + h, x : x + w][region].mean()),
                centroid=(float(centroids[i][0]), float(centroids[i][1])),
            )
        )
    return labels > 0, labels, components


def render_overlay(
    rgb: np.ndarray,
    score_map: np.ndarray,
    mask: np.ndarray,
    components: list[Component],
    threshold: float,
    alpha: float = 0.5,
    vmax: float | None = None,
) -> np.ndarray:
    """Heat map blended on the frame, threshold contours, component boxes and scores (BGR8).

    The colour scale runs from 0 to ``vmax`` (default 2 x threshold), so the threshold always
    sits mid-scale and colours mean the same thing from frame to frame.
    """
    vmax = float(vmax) if vmax else max(2.0 * float(threshold), 1e-6)
    scaled = np.clip(score_map * (255.0 / vmax), 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(scaled, cv2.COLORMAP_JET)
    frame_bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    overlay = cv2.addWeighted(heat, float(alpha), frame_bgr, 1.0 - float(alpha), 0.0)
    if mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 255), 2)
    scale = max(0.4, min(rgb.shape[:2]) / 900.0)
    for comp in components:
        x, y, w, h = comp.bbox
        cv2.rectangle(overlay, (x, y), (x + w, y + h), (0, 0, 255), 2)
        text = f"{comp.peak_score:.2f}"
        cv2.putText(overlay, text, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 255), 2, cv2.LINE_AA)
    return overlay
