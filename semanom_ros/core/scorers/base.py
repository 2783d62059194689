"""The Scorer interface: the part of the :class:`~semanom_ros.core.monitor.Monitor` that differs by mode."""
from __future__ import annotations

import numpy as np

from ..bank.store import NominalBank
from ..config import PipelineConfig
from ..errors import ConfigError
from ..features import Features
from ..result import AnomalyResult
from ..scoring import threshold_for_alpha


class Scorer:
    """Fitted to a bank; scores one frame's features into an AnomalyResult at a threshold.

    The Monitor owns the threshold (``config.threshold`` or the bank's calibration, moved by
    ``set_alpha`` / ``set_threshold``) and passes it to :meth:`score` with every frame;
    :meth:`threshold_at` re-derives it from the calibration stored in ``self.bank``.
    """

    bank: NominalBank
    config: PipelineConfig

    def threshold_at(self, alpha: float) -> float:
        """The threshold for another alpha, re-derived from the bank's stored calibration."""
        if not self.bank.calibration:
            raise ConfigError("alpha: the bank holds no calibration to re-derive a threshold from")
        return threshold_for_alpha(self.bank.calibration, alpha, self.config.calibration_level)

    def queries_on_device(self, extractor_device_type: str) -> bool:
        """Whether features may stay where the model runs (``FeatureExtractor.extract(on_device=True)``).

        True when the model and the bank's index are both on the GPU, so patch embeddings never leave it.
        """
        info = self.bank.index_info or {}
        return extractor_device_type == "cuda" and str(info.get("device", "cpu")).startswith("cuda")

    def score(self, features: Features, threshold: float, rgb: np.ndarray | None = None,
              extra_ignore: np.ndarray | None = None) -> AnomalyResult:
        """The AnomalyResult of one frame; ``extra_ignore`` (H, W) bool adds ignored pixels."""
        raise NotImplementedError

    def release(self) -> None:
        """Free models and the bank's searchable indexes (lifecycle cleanup)."""
        self.bank.release_search()


__all__ = ["Scorer"]
