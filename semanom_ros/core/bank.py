"""NominalBank: embeddings of nominal frames, where each came from, and a faiss index over them.

On disk a bank is a directory::

    manifest.json      format version, model id + weights fingerprint, input size, counts,
                       sources, calibration, per-file sizes and checksums
    embeddings.npy     (N, D) float16 unit vectors (memory-mapped on load)
    vector_meta.npy    (N,) structured: frame (global frame id), row, col
    frames.npy         (F,) structured: source, index (message ordinal), stamp_ns, vec_start, vec_count, grid_h, grid_w
    index.faiss        the approximate (IVF / HNSW) index, when one was built: rebuilding HNSW over
                       1e6 vectors takes minutes, reading it back seconds. Derived data: a missing,
                       corrupt or mismatched index file is rebuilt (with a warning), never fatal.

Saving writes a sibling temporary directory and swaps it in with one rename, so an interrupted
save leaves the previous bank exactly as it was.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import faiss
import numpy as np

from .errors import BankError, BankMismatchError
from .index import (
    APPROXIMATE_TYPES,
    IndexSpec,
    RecallProbe,
    build_index,
    maybe_to_gpu,
    is_approximate,
    recall_from_curve,
    resolve_type,
    search_excluding,
    set_search_depth,
)

BANK_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_FILES = ("embeddings.npy", "vector_meta.npy", "frames.npy")
INDEX_FILE = "index.faiss"
# Frames whose patches probe the index's recall at build time (a few dozen patches from each).
PROBE_FRAMES = 16
_log = logging.getLogger("semanom_ros.bank")

VECTOR_META_DTYPE = np.dtype([("frame", "<i4"), ("row", "<i2"), ("col", "<i2")])
FRAME_DTYPE = np.dtype(
    [
        ("source", "<i4"),
        ("index", "<i8"),
        ("stamp_ns", "<i8"),
        ("vec_start", "<i8"),
        ("vec_count", "<i4"),
        ("grid_h", "<i2"),
        ("grid_w", "<i2"),
    ]
)


@dataclass
class ModelSignature:
    """What must match between a bank and the pipeline that scores with it."""

    model: str
    fingerprint: str
    input_height: int
    dim: int
    patch_size: int = 14

    def to_dict(self) -> dict[str, Any]:
        return dict(
            model=self.model,
            fingerprint=self.fingerprint,
            input_height=self.input_height,
            dim=self.dim,
            patch_size=self.patch_size,
        )


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


class _Chunks:
    """Append-friendly growable array (amortised O(1) appends, one concatenate on read)."""

    def __init__(self, base: np.ndarray) -> None:
        self._parts: list[np.ndarray] = [base] if len(base) else []
        self._empty = base[:0]
        self._cached: np.ndarray | None = base

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
        """Write the array as a .npy file (the bytes np.save writes). A large array still in parts
        (a bank streamed from a long recording) is written part by part, so saving needs no
        second, concatenated copy of its vectors."""
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
        self._vectors = _Chunks(np.zeros((0, signature.dim), np.float16))
        self._vector_meta = _Chunks(np.zeros(0, VECTOR_META_DTYPE))
        self._frames = _Chunks(np.zeros(0, FRAME_DTYPE))
        self._num_vectors = 0
        self._num_frames = 0
        self._index: faiss.Index | None = None
        # Index strategy (None = from self.config); what was built, and what a loaded manifest said.
        self.index_spec: IndexSpec | None = None
        self.index_info: dict[str, Any] | None = None
        self._saved_index_info: dict[str, Any] | None = None
        self._cpu_index: faiss.Index | None = None  # kept beside a GPU index for excluding searches
        self._index_file: Path | None = None  # a loaded bank's index.faiss, checked against the manifest
        self.warnings: list[str] = []  # non-fatal problems found while loading or indexing (shown by nodes/tools)

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
        return self._vectors.array()

    @property
    def vector_meta(self) -> np.ndarray:
        return self._vector_meta.array()

    @property
    def frames(self) -> np.ndarray:
        return self._frames.array()

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
        if not np.isfinite(vectors).all():
            raise ValueError(f"vectors of frame {index} from {source} contain NaN or inf")
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
        self._frames.append(frame)
        self._vector_meta.append(meta)
        self._vectors.append(vectors.astype(np.float16))
        self._num_vectors += n
        self._num_frames += 1
        self._index = self._cpu_index = self.index_info = None
        self._index_file = None
        return frame_id

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
        if frame_of_vector is None:
            frame_of_vector = np.arange(len(vectors))
        frame_of_vector = np.asarray(frame_of_vector)
        order = np.argsort(frame_of_vector, kind="stable")
        frame_ids, starts = np.unique(frame_of_vector[order], return_index=True)
        bounds = list(starts) + [len(order)]
        for i, fid in enumerate(frame_ids):
            bank.add_frame(vectors[order[bounds[i] : bounds[i + 1]]], source=source, index=int(fid))
        return bank

    def merge(self, other: "NominalBank") -> None:
        """Append every frame of ``other`` (same model signature, else BankMismatchError)."""
        check_signature(other.signature, self.signature, where="merged bank")
        if other.kind != self.kind:
            raise BankMismatchError(f"cannot merge a {other.kind!r} bank into a {self.kind!r} bank")
        vecs, meta = other.vectors, other.vector_meta
        for fr in other.frames:
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
    def set_index_spec(self, spec: IndexSpec | None) -> None:
        """Choose the index strategy (None = from the bank's config); applied on the next search.
        The same strategy as the current one keeps the index already built (a Monitor built on an
        in-memory bank would otherwise index and tune it a second time)."""
        new = spec.validate() if spec is not None else None
        current = self.index_spec or IndexSpec.from_config(self.config)
        self.index_spec = new
        if self._index is not None and (new or IndexSpec.from_config(self.config)) == current:
            return
        self._index = self._cpu_index = None

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        _log.warning(message)

    def _ensure_index(self) -> faiss.Index:
        if self._index is None:
            if len(self) == 0:
                raise BankError("the bank is empty; add nominal frames before scoring")
            spec = self.index_spec or IndexSpec.from_config(self.config)
            index, info = self._saved_index(spec)
            if index is None:
                index, info = self._build_index(spec)
            gpu_index, info["device"] = maybe_to_gpu(index, spec.use_gpu)
            self._cpu_index = index if gpu_index is not index else None
            self._index, self.index_info = gpu_index, info
        return self._index

    def _saved_index(self, spec: IndexSpec) -> tuple[faiss.Index | None, dict[str, Any]]:
        """The index a loaded bank saved, when it is what ``spec`` asks for; else (None, {})."""
        saved = self._saved_index_info
        if not saved or saved.get("num_vectors") != len(self) or self._index_file is None:
            return None, {}
        wanted = resolve_type(spec, len(self))
        # auto above its threshold accepts whichever candidate auto chose when the bank was built.
        same = saved.get("type") == wanted or (wanted == "auto" and saved.get("requested") == "auto")
        nlist = int(saved.get("params", {}).get("nlist", 0))
        if not same or (spec.nlist and spec.nlist != nlist):
            return None, {}
        try:
            index = faiss.read_index(str(self._index_file))
        except RuntimeError as exc:
            self._warn(f"bank index {self._index_file} cannot be read ({exc}); rebuilding the index")
            return None, {}
        if index.ntotal != len(self) or index.d != self.dim:
            self._warn(
                f"bank index {self._index_file} holds {index.ntotal} vectors of dim {index.d}, the bank "
                f"{len(self)} of dim {self.dim}; rebuilding the index"
            )
            return None, {}
        info = dict(saved, loaded_from=str(self._index_file))
        depth = spec.nprobe if saved["type"] in ("ivf", "ivfpq") else spec.ef_search
        if depth and depth != saved.get("search_depth"):
            # A depth set by the user: the build-time curve knows its recall if it was tried.
            set_search_depth(index, depth)
            info["search_depth"] = int(depth)
            info["recall_at_1"] = recall_from_curve(saved.get("recall_curve"), depth)
        return index, info

    def _build_index(self, spec: IndexSpec) -> tuple[faiss.Index, dict[str, Any]]:
        measure = True
        saved = self._saved_index_info
        if saved and saved.get("num_vectors") == len(self) and saved.get("requested") == spec.type:
            # Same strategy as saved but no usable index file: rebuild what was saved (same type,
            # lists and search depth; seeded training) and keep the recall measured at build time.
            kept = {"type": saved["type"], "nlist": spec.nlist or int(saved.get("params", {}).get("nlist", 0))}
            depth = saved.get("search_depth")
            if depth and not (spec.nprobe or spec.ef_search):
                kept["nprobe" if saved["type"] in ("ivf", "ivfpq") else "ef_search"] = int(depth)
                measure = False
            spec = dataclasses.replace(spec, **kept)
        probe = self.recall_probe(spec) if measure and is_approximate(spec, len(self)) else None
        index, info = build_index(self.vectors, spec, measure_recall=measure, probe=probe)
        if saved and not measure:
            info["requested"] = saved["requested"]
            for key in ("recall_at_1", "recall_curve", "recall_probe"):
                info[key] = saved.get(key)
        return index, info

    def recall_probe(self, spec: IndexSpec, window: int | None = None) -> RecallProbe | None:
        """Half the queries: patches of up to 16 of this bank's frames, each searched with its
        neighbouring frames (within ``window`` messages, default the config's calibration_window)
        excluded, like a new pass of the same road; half: perturbed bank vectors. The tuned depth
        must satisfy both. None when too few frames are left to hold out."""
        if window is None:
            window = int(self.config.get("calibration_window", 12))
        frame_ids = list(iter_frame_ids(self, PROBE_FRAMES))
        per_frame = max(1, -(-(spec.recall_queries // 2) // max(len(frame_ids), 1)))
        rng = np.random.default_rng(spec.seed)
        queries, groups, start = [], [], 0
        for fid in frame_ids:
            exclude = self.excluded_ranges(fid, window)
            if sum(b - a for a, b in exclude) >= len(self):
                continue  # the window covers the whole bank: nothing left to find
            vecs = self.frame_vectors(fid)
            take = np.sort(rng.choice(len(vecs), size=min(per_frame, len(vecs)), replace=False))
            queries.append(vecs[take])
            groups.append((start, start + len(take), exclude))
            start += len(take)
        if len(groups) < 2:
            return None
        held_out = RecallProbe(
            np.ascontiguousarray(np.concatenate(queries), np.float32),
            groups,
            f"{start} patches of {len(groups)} bank frames, +-{window} frames excluded",
        )
        return held_out.with_perturbed(self.vectors, spec.recall_queries // 2, rng)

    def search(
        self, queries: np.ndarray, k: int = 1, exclude: Sequence[tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product (= cosine) k-NN. ``exclude`` lists [start, stop) vector-id ranges to skip.

        Returns (similarities (n, k) float32, ids (n, k) int64); missing neighbours get
        similarity -1 and id -1.
        """
        index = self._ensure_index()
        if _is_torch(queries):
            if not exclude and self._cpu_index is not None and queries.is_cuda:
                return self._search_on_gpu(index, queries, k)
            queries = queries.detach().cpu().numpy()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        k = min(int(k), len(self))
        if not exclude:
            sims, ids = index.search(queries, k)
        elif isinstance(index, faiss.IndexFlat):
            sims, ids = self._exact_search_excluding(queries, k, exclude)
        else:
            # ID selectors are CPU-only in faiss: a GPU index searches its CPU twin here.
            cpu = self._cpu_index if self._cpu_index is not None else index
            sims, ids = search_excluding(cpu, queries, k, exclude)
        sims = np.where(ids < 0, -1.0, sims).astype(np.float32)
        return sims, ids

    def _search_on_gpu(self, index: faiss.Index, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        # GPU index, queries already on the GPU (FeatureExtractor on_device): faiss's torch bridge
        # searches the tensor in place, so only the (n, k) answers cross to the host.
        import faiss.contrib.torch_utils  # noqa: F401  (teaches faiss indexes to take torch tensors)

        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {tuple(queries.shape)}")
        sims, ids = index.search(queries.float().contiguous(), min(int(k), len(self)))
        sims, ids = sims.cpu().numpy(), ids.cpu().numpy()
        return np.where(ids < 0, -1.0, sims).astype(np.float32), ids

    def _exact_search_excluding(
        self, queries: np.ndarray, k: int, exclude: Sequence[tuple[int, int]], block: int = 1 << 16
    ) -> tuple[np.ndarray, np.ndarray]:
        # faiss's ID selectors switch flat search off its BLAS path (about 9x slower here), so
        # exclusion over a flat index is a blocked matrix product with the excluded columns masked.
        index = self._ensure_index()
        base = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * self.dim).reshape(index.ntotal, self.dim)
        n = len(queries)
        best_s = np.full((n, k), -np.inf, np.float32)
        best_i = np.full((n, k), -1, np.int64)
        for start in range(0, index.ntotal, block):
            stop = min(start + block, index.ntotal)
            sims = queries @ base[start:stop].T
            for a, b in exclude:
                lo, hi = max(a, start), min(b, stop)
                if lo < hi:
                    sims[:, lo - start : hi - start] = -np.inf
            kk = min(k, stop - start)
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
            cand_i = np.concatenate([best_i, part + start], axis=1)
            order = np.argsort(-cand_s, axis=1)[:, :k]
            best_s = np.take_along_axis(cand_s, order, 1)
            best_i = np.take_along_axis(cand_i, order, 1)
        best_i[~np.isfinite(best_s)] = -1
        return best_s, best_i

    def excluded_ranges(self, frame_id: int, window: int) -> list[tuple[int, int]]:
        """Vector-id ranges of the frames within ``window`` messages of ``frame_id`` (same source)."""
        frames = self.frames
        fr = frames[frame_id]
        near = (frames["source"] == fr["source"]) & (np.abs(frames["index"] - fr["index"]) <= window)
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
            "format": "semanom_ros.bank",
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
            "index": _persisted_index_info(
                self.index_info
                or (
                    self._saved_index_info
                    if self._saved_index_info and self._saved_index_info.get("num_vectors") == len(self)
                    else None
                )
            ),
            "created_unix_ns": self.created_ns,
            "saved_unix_ns": time.time_ns(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the bank atomically: the old bank at ``path`` stays intact until the swap."""
        path = Path(path).expanduser().absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            files: dict[str, dict[str, Any]] = {}
            for name, chunks in zip(_FILES, (self._vectors, self._vector_meta, self._frames)):
                target = tmp / name
                with open(target, "wb") as fh:
                    chunks.write_npy(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                files[name] = {"bytes": target.stat().st_size, "blake2b": _file_digest(target)}
            index_written = self._write_index(tmp / INDEX_FILE)
            if index_written:
                files[INDEX_FILE] = {"bytes": index_written.stat().st_size, "blake2b": _file_digest(index_written)}
            manifest = self.manifest()
            manifest["files"] = files
            with open(tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=2, default=_json_default)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            _swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def _write_index(self, target: Path) -> Path | None:
        """Write the approximate index built (or loaded) for exactly these vectors; exact indexes
        are rebuilt in seconds from the embeddings and not worth their float32 bytes on disk."""
        info = self.index_info
        index = self._cpu_index if self._cpu_index is not None else self._index
        if index is None and self._index_file is not None and self._saved_index_info:
            # Loaded and never searched: carry the saved file over unchanged.
            shutil.copyfile(self._index_file, target)
        elif index is not None and info and info.get("type") in APPROXIMATE_TYPES and index.ntotal == len(self):
            faiss.write_index(index, str(target))
        else:
            return None
        with open(target, "rb+") as fh:
            os.fsync(fh.fileno())
        return target

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True, verify: bool | None = None) -> "NominalBank":
        """Load a bank directory; raises BankError saying what is missing or corrupt.

        ``verify`` checks file checksums (default: for banks under 512 MB); sizes and shapes are
        always checked, so a truncated file never loads.
        """
        path = Path(path).expanduser()
        _recover_interrupted_swap(path)
        if not path.exists():
            raise BankError(f"bank {path} does not exist; build one with 'semanom-bank build'")
        if not path.is_dir():
            raise BankError(f"bank {path} is a file, not a bank directory")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BankError(f"bank {path} has no {MANIFEST}: it is not a semanom_ros bank (or its save never finished)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BankError(f"bank manifest {manifest_path} is corrupt: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != "semanom_ros.bank":
            raise BankError(f"{manifest_path} is not a semanom_ros bank manifest")
        version = manifest.get("format_version")
        if version != BANK_FORMAT_VERSION:
            raise BankError(
                f"bank {path} has format version {version}; this semanom_ros reads version {BANK_FORMAT_VERSION}"
                " (rebuild the bank)"
            )
        files = manifest.get("files", {})
        total = sum(int(f.get("bytes", 0)) for f in files.values())
        if verify is None:
            verify = total < 512 * 2**20
        arrays = []
        for name in _FILES:
            fpath = path / name
            if not fpath.is_file():
                raise BankError(f"bank {path} is missing {name}")
            expected = files.get(name, {})
            size = fpath.stat().st_size
            if "bytes" in expected and size != expected["bytes"]:
                raise BankError(f"bank file {fpath} is truncated or altered: {size} bytes, manifest says {expected['bytes']}")
            if verify and "blake2b" in expected and _file_digest(fpath) != expected["blake2b"]:
                raise BankError(f"bank file {fpath} is corrupt: checksum differs from the manifest")
            try:
                arrays.append(np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False))
            except Exception as exc:
                raise BankError(f"bank file {fpath} cannot be read: {exc}") from None
        vectors, vmeta, frames = arrays
        m = manifest["model"]
        sig = ModelSignature(
            model=m["model"],
            fingerprint=m["fingerprint"],
            input_height=int(m["input_height"]),
            dim=int(m["dim"]),
            patch_size=int(m.get("patch_size", 14)),
        )
        n = int(manifest["num_vectors"])
        if vectors.shape != (n, sig.dim) or len(vmeta) != n or len(frames) != int(manifest["num_frames"]):
            raise BankError(
                f"bank {path} is inconsistent: embeddings {vectors.shape}, metadata {len(vmeta)}, "
                f"frames {len(frames)} vs manifest {n} vectors of dim {sig.dim}, {manifest['num_frames']} frames"
            )
        bank = cls(sig, kind=manifest.get("kind", "patch"), config=manifest.get("config"))
        bank.sources = [SourceInfo(**s) for s in manifest.get("sources", [])]
        bank.calibration = manifest.get("calibration")
        bank.extra = manifest.get("extra", {}) or {}
        bank._saved_index_info = manifest.get("index") or None
        bank.created_ns = int(manifest.get("created_unix_ns", 0))
        bank._vectors = _Chunks(vectors)
        bank._vector_meta = _Chunks(vmeta)
        bank._frames = _Chunks(frames)
        bank._num_vectors = n
        bank._num_frames = len(frames)
        bank._index_file = _checked_index_file(path, files.get(INDEX_FILE), verify, bank)
        return bank

    @staticmethod
    def read_manifest(path: str | Path) -> dict[str, Any]:
        """The manifest alone (for 'info' and compatibility checks without loading vectors)."""
        manifest_path = Path(path).expanduser() / MANIFEST
        try:
            return json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise BankError(f"{manifest_path} does not exist: not a semanom_ros bank") from None
        except json.JSONDecodeError as exc:
            raise BankError(f"bank manifest {manifest_path} is corrupt: {exc}") from None


def _is_torch(array: Any) -> bool:
    return type(array).__module__.startswith("torch")


def _persisted_index_info(info: dict[str, Any] | None) -> dict[str, Any] | None:
    # Where this process found the index and which device it runs on are not facts about the bank.
    return None if info is None else {k: v for k, v in info.items() if k not in ("loaded_from", "device")}


def _checked_index_file(path: Path, expected: dict[str, Any] | None, verify: bool, bank: NominalBank) -> Path | None:
    """The bank's index.faiss when the manifest lists it and it matches; None (with a warning) when not."""
    if not expected:
        return None
    fpath = path / INDEX_FILE
    if not fpath.is_file():
        bank._warn(f"bank {path} lists {INDEX_FILE} but it is missing; the index will be rebuilt")
        return None
    size = fpath.stat().st_size
    if size != expected.get("bytes"):
        bank._warn(f"bank index {fpath} is {size} bytes, the manifest says {expected.get('bytes')}; rebuilding the index")
        return None
    if verify and _file_digest(fpath) != expected.get("blake2b"):
        bank._warn(f"bank index {fpath} is corrupt (checksum differs from the manifest); rebuilding the index")
        return None
    return fpath


def check_signature(bank: ModelSignature, pipeline: ModelSignature, where: str = "bank") -> None:
    """Raise BankMismatchError naming exactly what differs between a bank and a pipeline."""
    problems = []
    if bank.fingerprint != pipeline.fingerprint:
        problems.append(
            f"model: the {where} was built with {bank.model!r} (weights {bank.fingerprint}), "
            f"the pipeline uses {pipeline.model!r} (weights {pipeline.fingerprint})"
        )
    if bank.input_height != pipeline.input_height:
        problems.append(
            f"input size: the {where} was built at input_height {bank.input_height}, "
            f"the pipeline uses {pipeline.input_height}"
        )
    if bank.dim != pipeline.dim:
        problems.append(f"dimension: the {where} holds {bank.dim}-d vectors, the model gives {pipeline.dim}-d")
    if problems:
        raise BankMismatchError(
            "; ".join(problems) + ". Rebuild the bank with this model and input size, or set the pipeline to match."
        )


# -- atomic directory replacement ------------------------------------------------------------
_RENAME_EXCHANGE = 2


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _swap_into_place(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
    elif _renameat2_exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old bank
    else:
        # Two renames; a crash between them leaves `.old` beside the target, which load() restores.
        old = target.parent / f".{target.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def _recover_interrupted_swap(target: Path) -> None:
    old = target.parent / f".{target.name}.old"
    if not target.exists() and (old / MANIFEST).is_file():
        os.rename(old, target)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def iter_frame_ids(bank: NominalBank, max_frames: int) -> Iterable[int]:
    """Evenly spaced frame ids, at most ``max_frames`` of them."""
    n = bank.num_frames
    if n <= max_frames:
        return range(n)
    return np.unique(np.linspace(0, n - 1, max_frames).round().astype(int)).tolist()
