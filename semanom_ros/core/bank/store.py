"""NominalBank: embeddings of nominal frames, where each came from, and the index that searches them.

The vectors and their provenance live here; the on-disk format is :mod:`.persist`, the index
life cycle and search :class:`~semanom_ros.core.search.index.SearchIndex` (``bank.search_index``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..config import PipelineConfig
from ..errors import BankError, BankMismatchError, ConfigError
from ..search.index import SearchIndex
from ..search.recall import evenly_spaced
from ..search.spec import IndexSpec
from .persist import (
    ARRAY_FILES,
    BANK_FORMAT_VERSION,
    FRAME_DTYPE,
    MANIFEST,
    VECTOR_META_DTYPE,
    read_bank_dir,
    read_manifest,
    write_bank_dir,
)
from .schema import FORMAT_NAME
from .signature import ModelSignature, check_signature

# Banks of this kind hold one vector per object (instance mode), not one per patch.
INSTANCE_BANK_KIND = "instance"
_log = logging.getLogger("semanom_ros.bank")


@dataclass
class SourceInfo:
    """One bag topic or image folder that contributed frames."""

    name: str
    topic: str | None = None
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None
    frames: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(
            name=self.name,
            topic=self.topic,
            first_stamp_ns=self.first_stamp_ns,
            last_stamp_ns=self.last_stamp_ns,
            frames=self.frames,
        )


class ChunkedArray:
    """Append-friendly growable array (amortised O(1) appends, one concatenate on read)."""

    def __init__(self, base: np.ndarray) -> None:
        self._parts: list[np.ndarray] = [base] if len(base) else []
        self._empty = base[:0]
        self._cached: np.ndarray | None = base

    @property
    def num_parts(self) -> int:
        """Appended parts not yet concatenated (a read joins them into one)."""
        return len(self._parts)

    def append(self, part: np.ndarray) -> None:
        self._parts.append(part)
        self._cached = None

    def array(self) -> np.ndarray:
        if self._cached is None:
            self._cached = np.concatenate(self._parts) if self._parts else self._empty
            self._parts = [self._cached] if len(self._cached) else []
        return self._cached

    # Above this size write_npy streams the parts instead of concatenating them first.
    STREAM_WRITE_BYTES = 64 * 2**20

    def write_npy(self, fh: Any) -> None:
        """Write the array as a .npy file (the bytes np.save writes).

        A large array still in parts (a bank streamed from a long recording) is written part by
        part, so saving needs no second, concatenated copy of its vectors.
        """
        if (
            self._cached is not None
            or len(self._parts) < 2
            or sum(p.nbytes for p in self._parts) < self.STREAM_WRITE_BYTES
        ):
            np.save(fh, np.ascontiguousarray(self.array()), allow_pickle=False)
            return
        first = self._parts[0]
        shape = (sum(len(p) for p in self._parts), *first.shape[1:])
        header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(fh, header)
        for part in self._parts:
            fh.write(np.ascontiguousarray(part, dtype=first.dtype).data)


class NominalBank:
    """Unit-norm embedding vectors of nominal data with provenance and a similarity index.

    ``kind`` is ``"patch"`` (one vector per patch) or another mode's name (instance, global);
    the search and calibration code is the same for all of them.
    """

    def __init__(self, signature: ModelSignature, kind: str = "patch", config: dict[str, Any] | None = None) -> None:
        self.signature = signature
        self.kind = kind
        self.config: dict[str, Any] = dict(config or {})
        self.sources: list[SourceInfo] = []
        self.calibration: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}
        self.created_ns = time.time_ns()
        # The growable arrays behind vectors / vector_meta / frames (memory-mapped for a loaded bank).
        self.vector_chunks = ChunkedArray(np.zeros((0, signature.dim), np.float16))
        self.meta_chunks = ChunkedArray(np.zeros(0, VECTOR_META_DTYPE))
        self.frame_chunks = ChunkedArray(np.zeros(0, FRAME_DTYPE))
        self._num_vectors = 0
        self._num_frames = 0
        self.search_index = SearchIndex(self)
        self._view_banks: dict[int, "NominalBank"] = {}  # per-view sub-banks (crop views), built on first use
        self.warnings: list[str] = []  # non-fatal problems found while loading or indexing (shown by nodes/tools)
        self.checks: list[str] = []  # what loading checked, one line each (semanom-bank info --verify)

    # -- contents ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.signature.dim

    def __len__(self) -> int:
        return self._num_vectors

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) float16 (memory-mapped for a loaded bank until something is appended)."""
        return self.vector_chunks.array()

    @property
    def vector_meta(self) -> np.ndarray:
        return self.meta_chunks.array()

    @property
    def frames(self) -> np.ndarray:
        return self.frame_chunks.array()

    def source_id(self, name: str, topic: str | None = None) -> int:
        """Index of a source, registering it on first use."""
        for i, src in enumerate(self.sources):
            if src.name == name and src.topic == topic:
                return i
        self.sources.append(SourceInfo(name=name, topic=topic))
        return len(self.sources) - 1

    def add_frame(
        self,
        vectors: np.ndarray,
        *,
        source: str,
        index: int,
        stamp_ns: int = 0,
        topic: str | None = None,
        rows: np.ndarray | None = None,
        cols: np.ndarray | None = None,
        grid: tuple[int, int] = (0, 0),
    ) -> int:
        """Add one frame's vectors (n, D); returns the frame's id in this bank."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {vectors.shape}")
        with np.errstate(over="ignore"):  # an overflow is reported below, with the frame it is in
            stored = vectors.astype(np.float16)
        finite = np.isfinite(stored).all(axis=1)  # after the cast: beyond +-65504 is inf in float16
        if not finite.all():
            raise ValueError(
                f"frame {index} of {source}" + (f" ({topic})" if topic else "")
                + f": vector {int(np.argmin(finite))} of {len(vectors)} holds NaN or inf (or a value beyond float16's"
                " +-65504) and cannot go into the bank (it would score every query 2.0); check the backbone's output"
            )
        n = len(vectors)
        sid = self.source_id(source, topic)
        src = self.sources[sid]
        src.frames += 1
        if stamp_ns:
            src.first_stamp_ns = stamp_ns if src.first_stamp_ns is None else min(src.first_stamp_ns, stamp_ns)
            src.last_stamp_ns = stamp_ns if src.last_stamp_ns is None else max(src.last_stamp_ns, stamp_ns)
        frame_id = self.num_frames
        frame = np.zeros(1, FRAME_DTYPE)
        frame[0] = (sid, index, stamp_ns, self._num_vectors, n, grid[0], grid[1])
        meta = np.zeros(n, VECTOR_META_DTYPE)
        meta["frame"] = frame_id
        meta["row"] = rows if rows is not None else -1
        meta["col"] = cols if cols is not None else -1
        self.frame_chunks.append(frame)
        self.meta_chunks.append(meta)
        self.vector_chunks.append(stored)
        self._num_vectors += n
        self._num_frames += 1
        self.search_index.invalidate()
        self._view_banks.clear()
        return frame_id

    # -- crop views ---------------------------------------------------------------------------
    # A vector of crop view v (PipelineConfig.crop_views[v - 1]) is stored with row -v: it has no
    # place on the full frame's grid. Full-frame vectors have row >= 0; row -1 without a grid only
    # occurs in banks of precomputed vectors, which have no crop views (num_views 1).
    def vector_views(self) -> np.ndarray:
        """View of each vector: 0 = the full frame, v = crop view v (from its row, -v)."""
        rows = self.vector_meta["row"].astype(np.int64)
        if self.num_views() == 1:
            return np.zeros(len(rows), np.int64)
        return np.where(rows < 0, -rows, 0)

    def num_views(self) -> int:
        """1 + the number of crop views the bank was built with (its config's ``crop_views``)."""
        return 1 + len(self.config.get("crop_views") or [])

    def view_bank(self, view: int) -> "NominalBank":
        """The bank of one view's vectors only (every frame and source kept), searched by that view's patches."""
        if self.num_views() == 1:
            return self
        if view not in self._view_banks:
            sub = self.subset(np.flatnonzero(self.vector_views() == view))
            sub.set_index_spec(self.search_index.current_spec())
            self._view_banks[view] = sub
        return self._view_banks[view]

    def subset(self, keep_ids: np.ndarray) -> "NominalBank":
        """A new bank with only the vectors ``keep_ids`` (ascending), every frame and source kept.

        Frames keep their table row (source, message ordinal, stamp, grid) even when none of their
        vectors survive, so the frame ids - and the leave-one-out windows built on them - stay the
        same as here. Calibration is not copied (it describes this bank).
        """
        keep_ids = np.asarray(keep_ids, np.int64)
        if keep_ids.ndim != 1 or (len(keep_ids) and (keep_ids[0] < 0 or keep_ids[-1] >= len(self))):
            raise ValueError(f"keep_ids must be ascending vector ids in [0, {len(self)})")
        if len(keep_ids) > 1 and not (np.diff(keep_ids) > 0).all():
            raise ValueError("keep_ids must be strictly ascending")
        out = NominalBank(self.signature, kind=self.kind, config=self.config)
        out.extra = dict(self.extra)
        out.created_ns = self.created_ns
        vectors, meta = self.vectors, self.vector_meta
        for fr in self.frames:
            start, n = int(fr["vec_start"]), int(fr["vec_count"])
            lo, hi = np.searchsorted(keep_ids, [start, start + n])
            ids = keep_ids[lo:hi]
            src = self.sources[int(fr["source"])]
            out.add_frame(
                np.asarray(vectors[ids]), source=src.name, topic=src.topic, index=int(fr["index"]),
                stamp_ns=int(fr["stamp_ns"]), rows=meta["row"][ids], cols=meta["col"][ids],
                grid=(int(fr["grid_h"]), int(fr["grid_w"])),
            )
        # Same time ranges as here (add_frame only sees non-zero stamps of the frames).
        originals = {(s.name, s.topic): s for s in self.sources}
        for ours in out.sources:
            theirs = originals[(ours.name, ours.topic)]
            ours.first_stamp_ns, ours.last_stamp_ns = theirs.first_stamp_ns, theirs.last_stamp_ns
        return out

    def add_patch_grid(
        self,
        patches: np.ndarray,
        *,
        source: str,
        index: int,
        stamp_ns: int = 0,
        topic: str | None = None,
        keep: np.ndarray | None = None,
    ) -> int:
        """Add an (h, w, D) patch grid; ``keep`` (h, w) bool leaves out ignored patches."""
        h, w, d = patches.shape
        rows, cols = np.divmod(np.arange(h * w), w)
        flat = patches.reshape(h * w, d)
        if keep is not None:
            sel = np.asarray(keep, bool).reshape(-1)
            flat, rows, cols = flat[sel], rows[sel], cols[sel]
        return self.add_frame(
            flat, source=source, index=index, stamp_ns=stamp_ns, topic=topic, rows=rows, cols=cols, grid=(h, w)
        )

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray,
        signature: ModelSignature,
        *,
        frame_of_vector: np.ndarray | None = None,
        source: str = "precomputed",
        kind: str = "patch",
    ) -> "NominalBank":
        """A bank from precomputed embeddings; ``frame_of_vector`` groups vectors into frames."""
        bank = cls(signature, kind=kind)
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim == 2:
            finite = np.isfinite(vectors).all(axis=1)
            if not finite.all():
                row = int(np.argmin(finite))
                where = "" if frame_of_vector is None else f" (frame {np.asarray(frame_of_vector)[row]})"
                raise ValueError(
                    f"from_vectors: vector {row}{where} of {len(vectors)} from {source} holds NaN or inf and cannot "
                    "go into the bank"
                )
        if frame_of_vector is None:
            frame_of_vector = np.arange(len(vectors))
        frame_of_vector = np.asarray(frame_of_vector)
        order = np.argsort(frame_of_vector, kind="stable")
        frame_ids, starts = np.unique(frame_of_vector[order], return_index=True)
        bounds = list(starts) + [len(order)]
        for i, fid in enumerate(frame_ids):
            bank.add_frame(vectors[order[bounds[i] : bounds[i + 1]]], source=source, index=int(fid))
        return bank

    def merge(self, other: "NominalBank", max_frames: int | None = None) -> None:
        """Append every frame of ``other``, or its first ``max_frames`` (same signature, else BankMismatchError)."""
        check_signature(other.signature, self.signature, where="merged bank")
        if other.kind != self.kind:
            raise BankMismatchError(f"cannot merge a {other.kind!r} bank into a {self.kind!r} bank")
        vecs, meta = other.vectors, other.vector_meta
        for fr in other.frames[:max_frames]:
            src = other.sources[fr["source"]]
            s, n = int(fr["vec_start"]), int(fr["vec_count"])
            self.add_frame(
                np.asarray(vecs[s : s + n]),
                source=src.name,
                topic=src.topic,
                index=int(fr["index"]),
                stamp_ns=int(fr["stamp_ns"]),
                rows=meta["row"][s : s + n],
                cols=meta["col"][s : s + n],
                grid=(int(fr["grid_h"]), int(fr["grid_w"])),
            )
        self.calibration = None

    # -- search -----------------------------------------------------------------------------
    @property
    def index_spec(self) -> IndexSpec | None:
        """The index strategy set with :meth:`set_index_spec` (None = from the bank's config)."""
        return self.search_index.spec

    @property
    def index_info(self) -> dict[str, Any] | None:
        """What the index built (or loaded) is: type, parameters, recall, search depth, device."""
        return self.search_index.info

    def set_index_spec(self, spec: IndexSpec | None) -> None:
        """Choose the index strategy (None = from the bank's config); see SearchIndex.set_spec.

        Crop views' banks already built follow (each keeps its own index of its own vectors).
        """
        self.search_index.set_spec(spec)
        for view_bank in self._view_banks.values():
            view_bank.set_index_spec(spec)

    def release_search(self) -> None:
        """Drop the searchable indexes, the crop views' too (GPU memory); the next search rebuilds them."""
        self.search_index.release()
        for view_bank in self._view_banks.values():
            view_bank.search_index.release()

    def warn(self, message: str) -> None:
        """Record and log a non-fatal problem (shown by nodes and tools)."""
        self.warnings.append(message)
        _log.warning(message)

    def search(
        self, queries: np.ndarray, k: int = 1, exclude: Sequence[tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product (= cosine) k-NN. ``exclude`` lists [start, stop) vector-id ranges to skip.

        Returns (similarities (n, k) float32, ids (n, k) int64); missing neighbours get
        similarity -1 and id -1.
        """
        return self.search_index.search(queries, k, exclude)

    def excluded_ranges(self, frame_id: int, window: int | None) -> list[tuple[int, int]]:
        """Vector-id ranges of the frames within ``window`` messages of ``frame_id`` (same source).

        ``window`` None: every frame of the source (calibration that holds a whole drive out).
        """
        frames = self.frames
        fr = frames[frame_id]
        near = frames["source"] == fr["source"]
        if window is not None:
            near &= np.abs(frames["index"] - fr["index"]) <= window
        ranges: list[tuple[int, int]] = []
        for f in frames[near]:
            a, b = int(f["vec_start"]), int(f["vec_start"] + f["vec_count"])
            if ranges and ranges[-1][1] == a:
                ranges[-1] = (ranges[-1][0], b)
            else:
                ranges.append((a, b))
        return ranges

    def frame_vectors(self, frame_id: int) -> np.ndarray:
        fr = self.frames[frame_id]
        s, n = int(fr["vec_start"]), int(fr["vec_count"])
        return np.asarray(self.vectors[s : s + n], dtype=np.float32)

    # -- persistence ------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": BANK_FORMAT_VERSION,
            "kind": self.kind,
            "model": self.signature.to_dict(),
            "num_vectors": len(self),
            "num_frames": self.num_frames,
            "dim": self.dim,
            "embedding_dtype": "float16",
            "sources": [s.to_dict() for s in self.sources],
            "calibration": self.calibration,
            "config": self.config,
            "extra": self.extra,
            "index": self.search_index.persisted_info(),
            "created_unix_ns": self.created_ns,
            "saved_unix_ns": time.time_ns(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the bank atomically: the old bank at ``path`` stays intact until the swap."""
        chunks = (self.vector_chunks, self.meta_chunks, self.frame_chunks)
        arrays = [(name, c.write_npy) for name, c in zip(ARRAY_FILES, chunks)]
        return write_bank_dir(path, arrays, self.search_index.write, self.manifest)

    @classmethod
    def load(
        cls, path: str | Path, *, mmap: bool = True, verify: bool | None = None, strict: bool = False
    ) -> "NominalBank":
        """Load a bank directory; raises BankError saying what is missing or corrupt.

        ``verify`` checks file checksums (default: for banks under 512 MB); the manifest's checksum
        and keys, sizes, shapes, the frame table and finiteness are always checked, so a truncated
        or NaN-filled file never loads. ``bank.checks`` lists what was checked. A damaged index
        file is rebuilt with a warning, unless ``strict`` (then it is a BankError too).
        """
        files = read_bank_dir(path, mmap=mmap, verify=verify, strict=strict)
        manifest = files.manifest
        config = manifest.get("config") or {}
        check_bank_config(config, Path(path).expanduser() / MANIFEST)
        files.checks.append("config: the recorded pipeline and index settings are valid")
        bank = cls(files.signature, kind=manifest.get("kind", "patch"), config=config)
        bank.checks = files.checks
        bank.sources = [SourceInfo(**s) for s in manifest.get("sources", [])]
        bank.calibration = manifest.get("calibration")
        bank.extra = manifest.get("extra", {}) or {}
        bank.created_ns = int(manifest.get("created_unix_ns", 0))
        bank.vector_chunks = ChunkedArray(files.vectors)
        bank.meta_chunks = ChunkedArray(files.vector_meta)
        bank.frame_chunks = ChunkedArray(files.frames)
        bank._num_vectors = len(files.vectors)
        bank._num_frames = len(files.frames)
        bank.search_index.attach_saved(manifest.get("index"), files.index_file)
        for message in files.warnings:
            bank.warn(message)
        return bank

    @staticmethod
    def read_manifest(path: str | Path) -> dict[str, Any]:
        """The manifest alone (for 'info' and compatibility checks without loading vectors)."""
        return read_manifest(path)


def check_bank_config(config: dict[str, Any], manifest_path: Path) -> None:
    """Check that the manifest's ``config`` gives a valid PipelineConfig and IndexSpec.

    Tools and the monitor build both from it; a bad value is a BankError naming the manifest and
    the setting.
    """
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    try:
        PipelineConfig.from_dict({k: v for k, v in config.items() if k in known})
        IndexSpec.from_config(config)
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise BankError(
            f"bank manifest {manifest_path}: key 'config' holds an unusable setting: {exc}; rebuild the bank"
        ) from None


def iter_frame_ids(bank: Any, max_frames: int) -> Iterable[int]:
    """Evenly spaced frame ids of a bank (anything with ``num_frames``), at most ``max_frames`` of them."""
    return evenly_spaced(bank.num_frames, max_frames)


__all__ = [
    "FRAME_DTYPE",
    "INSTANCE_BANK_KIND",
    "VECTOR_META_DTYPE",
    "ChunkedArray",
    "NominalBank",
    "SourceInfo",
    "check_bank_config",
    "iter_frame_ids",
]
