"""Pixels left out of banks and scores: the configured ignore mask at any frame size, per-frame masks."""
from __future__ import annotations

import cv2
import numpy as np

from .config import PipelineConfig
from .errors import ConfigError, ImageError
from .features import patch_mask_from_pixels


def load_ignore_mask(path: str | None) -> np.ndarray | None:
    """Read an ignore-mask image (non-zero = ignore) as (H, W) bool; None when not set."""
    if not path:
        return None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ConfigError(f"ignore_mask: cannot read {path} as an image (PNG with non-zero = ignored pixels)")
    if image.ndim == 3:
        image = image.max(axis=2)
    return image > 0


class IgnoreMask:
    """The pipeline's ignore mask (``ignore_mask``, ``ignore_patch_fraction``).

    Resized to each frame size once and cached, combined with masks that come with a frame.
    """

    def __init__(self, pixels: np.ndarray | None, patch_fraction: float = 0.5) -> None:
        self.configured = pixels  # (H, W) bool at the mask file's own size, or None
        self.patch_fraction = float(patch_fraction)
        self._pixels: dict[tuple[int, int], np.ndarray] = {}
        self._patches: dict[tuple[int, int, int, int], np.ndarray] = {}

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "IgnoreMask":
        """Reads ``config.ignore_mask`` now (an unreadable file fails here, not at the first frame)."""
        return cls(load_ignore_mask(config.ignore_mask), config.ignore_patch_fraction)

    def pixels(self, size: tuple[int, int]) -> np.ndarray | None:
        """The configured mask at a frame size (H, W); None when no mask is configured."""
        if self.configured is None:
            return None
        size = (int(size[0]), int(size[1]))
        if size not in self._pixels:
            mask = self.configured
            if mask.shape != size:
                resized = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
                mask = resized > 0
            self._pixels[size] = mask
        return self._pixels[size]

    def with_frame(
        self, size: tuple[int, int], own: np.ndarray | None, what: str = "ignore mask shape"
    ) -> np.ndarray | None:
        """The configured mask at ``size`` OR a frame's own (H, W) mask; None when neither is set.

        ImageError naming ``what`` when the frame's mask shape differs from the frame's.
        """
        base = self.pixels(size)
        if own is None:
            return base
        own = np.asarray(own, bool)
        if own.shape != tuple(size):
            raise ImageError(f"{what} {own.shape} differs from the frame's {tuple(size)}")
        return own if base is None else (base | own)

    def patch_mask(self, pixels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """(H, W) pixels -> (h, w) patches ignored (more than ``patch_fraction`` of them ignored)."""
        return patch_mask_from_pixels(pixels, grid, self.patch_fraction)

    def patches(self, image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray | None:
        """The configured mask as ignored patches of a frame size and patch grid (cached)."""
        if self.configured is None:
            return None
        key = (*image_size, *grid)
        if key not in self._patches:
            self._patches[key] = self.patch_mask(self.pixels(image_size), grid)
        return self._patches[key]


__all__ = ["IgnoreMask", "load_ignore_mask"]
