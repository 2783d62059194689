"""What the engine hands out per frame, and what it takes in: AnomalyResult and FrameLike."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .maps import Component


@dataclass
class AnomalyResult:
    """What the monitor concluded about one frame."""

    is_anomalous: bool
    score: float  # image score (max patch score); compare with `threshold`
    threshold: float
    score_map: np.ndarray  # (H, W) float32 raw scores at frame resolution
    mask: np.ndarray  # (H, W) bool: above threshold, small components dropped
    labels: np.ndarray  # (H, W) uint16: 0 = none, i = components[i-1] / instances[i-1]
    components: list[Component]
    patch_scores: np.ndarray  # (h, w) float32 grid the map was made from
    instances: list[Any] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class FrameLike(Protocol):
    """A frame for bank building: RGB pixels and where it came from.

    Optionally ``topic`` and ``ignore``, an (H, W) bool mask of pixels to leave out.
    """

    rgb: np.ndarray
    source: str
    index: int
    stamp_ns: int


__all__ = ["AnomalyResult", "FrameLike"]
