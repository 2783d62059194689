"""Bank builders: frames in (streamed, batched through the backbone), a calibrated bank out.

:class:`BankBuilder` holds what every kind of bank shares (batching, ignore masks, provenance,
calibration); a subclass says what one frame's features add to its bank. The patch builder
lives here, the instance and scene builders beside their pipelines.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from ..config import PipelineConfig
from ..features import FeatureExtractor, Features
from ..ignore import IgnoreMask
from ..result import FrameLike
from ..scoring import calibrate_bank
from ..threads import configure_threads
from .signature import check_signature
from .store import NominalBank


def frame_provenance(frame: FrameLike) -> dict[str, Any]:
    """Where a frame came from, as :meth:`NominalBank.add_frame` records it."""
    return dict(
        source=str(frame.source),
        index=int(frame.index),
        stamp_ns=int(getattr(frame, "stamp_ns", 0) or 0),
        topic=getattr(frame, "topic", None),
    )


class BankBuilder:
    """Streams frames into ``self.bank`` in batches of ``config.batch_size``, then calibrates it.

    Frames are any objects with ``rgb``, ``source``, ``index``, ``stamp_ns`` (and optionally
    ``topic`` and ``ignore``, an (H, W) bool mask of pixels to leave out). Subclasses set
    ``self.extractor`` and ``self.bank`` and implement :meth:`add_features`.
    """

    extractor: FeatureExtractor
    bank: NominalBank

    def __init__(self, config: PipelineConfig) -> None:
        config.validate()
        configure_threads(config.num_threads)
        self.config = config
        self.ignore = IgnoreMask.from_config(config)
        self._pending: list[Any] = []

    def add(self, frame: FrameLike) -> None:
        self._pending.append(frame)
        if len(self._pending) >= self.config.batch_size:
            self.flush()

    def add_all(
        self, frames: Iterable[FrameLike], progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None
    ) -> NominalBank:
        for frame in frames if progress is None else progress(frames):
            self.add(frame)
        self.flush()
        return self.bank

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        feats = self.extractor.extract_batch([f.rgb for f in batch])
        for frame, feat in zip(batch, feats):
            self.add_features(frame, feat)

    def add_features(self, frame: FrameLike, feat: Features) -> int:
        """Add one frame whose features are extracted; returns the frame's id in the bank."""
        raise NotImplementedError

    def calibrate(self, progress=None) -> dict[str, Any]:
        """Leave-one-out threshold of the bank (see :func:`~semanom_ros.core.scoring.calibrate_bank`)."""
        self.flush()
        return calibrate_bank(self.bank, self.config, progress)


class PatchBankBuilder(BankBuilder):
    """Streams frames into a patch bank (one vector per patch) in batches, then calibrates it."""

    def __init__(
        self,
        config: PipelineConfig,
        extractor: FeatureExtractor | None = None,
        bank: NominalBank | None = None,
    ) -> None:
        super().__init__(config)
        self.extractor = extractor or FeatureExtractor.from_config(config)
        self.extractor.check_views(config)
        sig = self.extractor.signature()
        if bank is not None:
            check_signature(bank.signature, sig, where="existing bank")
            self.bank = bank
        else:
            self.bank = NominalBank(sig, kind="patch", config=config.to_dict())

    def add_features(self, frame: FrameLike, feat: Features) -> int:
        """Add one frame whose features are already extracted; returns the frame's id in the bank.

        For callers that look at the features first, e.g. to skip near duplicates by CLS similarity.
        """
        own = getattr(frame, "ignore", None)
        ignore_px = self.ignore.with_frame(feat.image_size, own, "frame ignore mask")
        if not feat.views:
            keep = None if ignore_px is None else ~self.ignore.patch_mask(ignore_px, feat.grid_shape)
            return self.bank.add_patch_grid(feat.patches, keep=keep, **frame_provenance(frame))
        # Crop views: their patches join the frame's in the bank with row -v (view v), col -1.
        height, width = feat.image_size
        parts = [((0, height, 0, width), feat.patches)] + [(view.box, view.patches) for view in feat.views]
        vectors, rows, cols = [], [], []
        for view_index, ((top, bottom, left, right), patches) in enumerate(parts):
            h, w, d = patches.shape
            flat = np.asarray(patches).reshape(h * w, d)
            keep = np.ones(h * w, bool)
            if ignore_px is not None:
                keep = ~self.ignore.patch_mask(ignore_px[top:bottom, left:right], (h, w)).reshape(-1)
            r, c = np.divmod(np.arange(h * w), w)
            vectors.append(flat[keep])
            rows.append(r[keep] if view_index == 0 else np.full(int(keep.sum()), -view_index))
            cols.append(c[keep] if view_index == 0 else np.full(int(keep.sum()), -1))
        return self.bank.add_frame(
            np.concatenate(vectors), rows=np.concatenate(rows), cols=np.concatenate(cols), grid=feat.grid_shape,
            **frame_provenance(frame),
        )


__all__ = ["BankBuilder", "PatchBankBuilder", "frame_provenance"]
