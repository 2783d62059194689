"""The score map as a colour image on a scale fixed by the threshold (``~/heatmap``).

Scores live in a narrow band (e.g. 0 .. 0.3 with a threshold near 0.14), so a fixed 0 .. 1 scale
shows an almost black image. Here the colour scale runs from 0 to 2 x threshold: the threshold
is always the middle of the colour map (green in TURBO), nominal regions are blue, anomalous ones
yellow to red, and a frame looks the same from one frame to the next; a thin contour marks the
threshold itself.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["HEATMAP_COLORMAP", "heatmap_scale", "render_heatmap"]

HEATMAP_COLORMAP = cv2.COLORMAP_TURBO
CONTOUR_BGR = (255, 255, 255)


def heatmap_scale(threshold: float) -> float:
    """Score shown at the top of the colour scale: 2 x threshold (the threshold sits mid-scale)."""
    return max(2.0 * float(threshold), 1e-6)


def render_heatmap(score_map: np.ndarray, threshold: float, contour: bool = True) -> np.ndarray:
    """(H, W) scores -> (H, W, 3) BGR8 colour map on [0, 2 x threshold], threshold contour drawn.

    Scores above 2 x threshold saturate at the top colour; NaN (e.g. ignored pixels) shows as 0.
    """
    scores = np.nan_to_num(np.asarray(score_map, np.float32), nan=0.0, posinf=np.inf, neginf=0.0)
    if scores.ndim != 2:
        raise ValueError(f"render_heatmap: score_map must be (H, W); got shape {scores.shape}")
    scaled = np.clip(scores * (255.0 / heatmap_scale(threshold)), 0.0, 255.0).astype(np.uint8)
    heat = cv2.applyColorMap(scaled, HEATMAP_COLORMAP)
    if contour:
        above = (scores > float(threshold)).astype(np.uint8)
        if above.any() and not above.all():
            contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(heat, contours, -1, CONTOUR_BGR, max(1, min(scores.shape) // 300))
    return heat
