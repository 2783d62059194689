"""Instance outlines and labels drawn on an overlay."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .pipeline import Instance


def draw_instances(overlay_bgr: np.ndarray, instances: Sequence[Instance], thickness: int = 2) -> np.ndarray:
    """Draw each instance's mask outline and "label score" on a BGR8 image (in place; returned).

    Anomalous instances are outlined red, nominal ones green. ``Monitor.overlay`` calls this on
    the output of ``maps.render_overlay`` whenever the result carries instances.
    """
    if not instances:
        return overlay_bgr
    scale = max(0.4, min(overlay_bgr.shape[:2]) / 900.0)
    for inst in instances:
        colour = (0, 0, 255) if inst.is_anomalous else (0, 200, 0)
        if inst.mask is not None and inst.mask.shape == overlay_bgr.shape[:2] and inst.mask.any():
            contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(overlay_bgr, contours, -1, colour, thickness)
        x, y, _, _ = inst.box
        text = f"{inst.index}:{inst.label[:24]} {inst.score:.2f}"
        origin = (max(0, x), max(12, y - 4))
        cv2.putText(overlay_bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(overlay_bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, thickness - 1),
                    cv2.LINE_AA)
    return overlay_bgr


__all__ = ["draw_instances"]
