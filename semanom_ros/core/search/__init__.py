"""Similarity search over a bank's vectors: one :class:`SearchIndex` per bank, backends behind it."""
from .index import SearchIndex
from .spec import INDEX_TYPES, IndexSpec

__all__ = ["INDEX_TYPES", "IndexSpec", "SearchIndex"]
