"""Instance banks: nominal frames -> OWLv2 -> SAM 2 -> one mask-averaged vector per instance."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..bank.builder import BankBuilder, frame_provenance
from ..bank.store import INSTANCE_BANK_KIND, NominalBank
from ..config import PipelineConfig
from ..features import FeatureExtractor, Features
from ..result import FrameLike
from .pipeline import InstancePipeline, check_instance_bank


class InstanceBankBuilder(BankBuilder):
    """Streams nominal frames into an instance bank (one vector per instance), then calibrates it.

    Frames are the same objects the patch builder takes (``rgb``, ``source``, ``index``,
    ``stamp_ns``, optional ``topic`` and ``ignore``). DINOv2 runs in batches of
    ``config.batch_size``; OWLv2 and SAM 2 run per frame.
    """

    def __init__(
        self,
        config: PipelineConfig,
        pipeline: InstancePipeline | None = None,
        bank: NominalBank | None = None,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        super().__init__(config)
        self.pipeline = pipeline or InstancePipeline.from_config(config, extractor)
        self.extractor = self.pipeline.extractor
        if bank is not None:
            check_instance_bank(bank, self.pipeline, where="existing bank")
            self.bank = bank
        else:
            signature = self.extractor.signature()
            self.bank = NominalBank(signature, kind=INSTANCE_BANK_KIND, config=config.to_dict())
            self.bank.extra["instance"] = self.pipeline.describe()
        self.frames_added = 0
        self.instances_added = 0
        self.dropped: dict[str, int] = {}

    def add_features(self, frame: FrameLike, feat: Features) -> int:
        ignore = self.ignore.with_frame(feat.image_size, getattr(frame, "ignore", None), "frame ignore mask")
        found = self.pipeline.detect(frame.rgb, feat, ignore)
        for _, reason in found.dropped:
            key = reason.split(" < ")[0] if "<" in reason else reason
            self.dropped[key] = self.dropped.get(key, 0) + 1
        vectors = (
            np.stack([inst.embedding for inst in found.instances])
            if found.instances
            else np.zeros((0, self.bank.dim), np.float32)
        )
        # A frame without instances is still recorded: it scores 0 in image-level calibration.
        frame_id = self.bank.add_frame(vectors, **frame_provenance(frame))
        self.frames_added += 1
        self.instances_added += len(vectors)
        return frame_id


def build_instance_bank(
    config: PipelineConfig,
    frames: Iterable[Any],
    output: str | Path | None = None,
    *,
    calibrate: bool = True,
    bank: NominalBank | None = None,
    pipeline: InstancePipeline | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> NominalBank:
    """Build (or extend ``bank``), calibrate and (when ``output`` is given) atomically save an instance bank.

    From nominal frames. What ``semanom-bank build --mode instance`` calls.
    """
    builder = InstanceBankBuilder(config, pipeline=pipeline, bank=bank)
    builder.add_all(frames, progress)
    if calibrate:
        builder.calibrate()
    builder.bank.extra["instance_build"] = {
        "frames": builder.frames_added,
        "instances": builder.instances_added,
        "dropped": dict(builder.dropped),
    }
    if output is not None:
        builder.bank.save(output)
    return builder.bank


__all__ = ["InstanceBankBuilder", "build_instance_bank"]
