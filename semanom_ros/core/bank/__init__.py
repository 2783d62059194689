"""The nominal bank: vectors + provenance (store), on-disk format (persist), model signature.

Bank builders (:mod:`.builder`) are imported from their module: they run the backbone.
"""
from .persist import BANK_FORMAT_VERSION, INDEX_FILE, MANIFEST
from .signature import ModelSignature, check_signature
from .store import INSTANCE_BANK_KIND, NominalBank, SourceInfo, iter_frame_ids

__all__ = [
    "BANK_FORMAT_VERSION",
    "INDEX_FILE",
    "INSTANCE_BANK_KIND",
    "MANIFEST",
    "ModelSignature",
    "NominalBank",
    "SourceInfo",
    "check_signature",
    "iter_frame_ids",
]
