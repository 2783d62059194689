"""Instance mode's pipeline: OWLv2 boxes -> SAM 2 masks -> mask-averaged DINOv2 embeddings.

Modules: detector (OWLv2 boxes), segmenter (SAM 2 masks), embeddings (mask-averaged DINOv2
embeddings), the instance bank builder and overlay drawing. Scoring is
:mod:`semanom_ros.core.scorers.instance`.
"""
from .builder import InstanceBankBuilder, build_instance_bank
from .detector import BoxProposer, merge_overlapping_boxes
from .drawing import draw_instances
from .embeddings import MaskEmbeddings, mask_average_embeddings, patch_coverage
from .pipeline import INSTANCE_BANK_KIND, DetectedInstances, Instance, InstancePipeline, check_instance_bank
from .segmenter import Sam2Segmenter

__all__ = [
    "BoxProposer",
    "DetectedInstances",
    "INSTANCE_BANK_KIND",
    "Instance",
    "InstanceBankBuilder",
    "InstancePipeline",
    "MaskEmbeddings",
    "Sam2Segmenter",
    "build_instance_bank",
    "check_instance_bank",
    "draw_instances",
    "mask_average_embeddings",
    "merge_overlapping_boxes",
    "patch_coverage",
]
