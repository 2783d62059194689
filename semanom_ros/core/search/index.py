"""SearchIndex: the similarity index a bank owns, from build (or load) to search.

The bank holds vectors and where each came from; its SearchIndex decides how they are searched
(:class:`~semanom_ros.core.search.spec.IndexSpec`), builds or reloads that index on first use,
tunes its recall, keeps a CPU twin beside a GPU index for excluding searches, and writes the
approximate index next to the bank's files. Search engines are backends chosen in
:meth:`SearchIndex.ensure`: exact torch search with the bank resident on the pipeline's GPU
(``torch_exact``; faiss-gpu wheels are CUDA 12 only and cannot sit beside a CUDA 13 torch), faiss
on the host otherwise (``faiss_backend``: flat, IVF or HNSW by size), and faiss whenever the bank
does not fit the GPU memory budget (the reason goes to the bank's warnings).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Protocol, Sequence

import faiss
import numpy as np
import torch

from ..errors import BankError, ConfigError
from .faiss_backend import (
    build_index,
    exact_search_excluding,
    maybe_to_gpu,
    search_excluding,
    search_torch_tensor,
    set_search_depth,
)
from .recall import RecallProbe, evenly_spaced, recall_from_curve
from .spec import APPROXIMATE_TYPES, IndexSpec, is_approximate, resolve_type
from .torch_exact import TorchExactIndex, device_fit, resolve_search_device, resolve_search_dtype

# Frames whose patches probe the index's recall at build time (a few dozen patches from each).
PROBE_FRAMES = 16


class IndexedVectors(Protocol):
    """What a SearchIndex reads from the bank that owns it."""

    config: dict[str, Any]

    @property
    def dim(self) -> int: ...

    @property
    def num_frames(self) -> int: ...

    @property
    def vectors(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def excluded_ranges(self, frame_id: int, window: int) -> list[tuple[int, int]]: ...

    def frame_vectors(self, frame_id: int) -> np.ndarray: ...

    def warn(self, message: str) -> None: ...


def is_torch_tensor(array: Any) -> bool:
    return type(array).__module__.startswith("torch")


class SearchIndex:
    """The index over one bank's vectors: strategy, life cycle (build, load, invalidate, release), search."""

    def __init__(self, vectors: IndexedVectors) -> None:
        self._vectors = vectors
        self.spec: IndexSpec | None = None  # None = from the bank's config
        self.info: dict[str, Any] | None = None  # what was built (or loaded): type, recall, depth, ...
        self.saved_info: dict[str, Any] | None = None  # the index entry of a loaded bank's manifest
        self.saved_file: Path | None = None  # a loaded bank's index.faiss, checked against the manifest
        self._index: faiss.Index | TorchExactIndex | None = None
        self._cpu_index: faiss.Index | None = None  # kept beside a GPU index for excluding searches

    # -- life cycle -------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self._index is not None

    def current_spec(self) -> IndexSpec:
        return self.spec or IndexSpec.from_config(self._vectors.config)

    def set_spec(self, spec: IndexSpec | None) -> None:
        """Choose the index strategy (None = from the bank's config); applied on the next search.

        The same strategy as the current one keeps the index already built (a Monitor built on an
        in-memory bank would otherwise index and tune it a second time).
        """
        new = spec.validate() if spec is not None else None
        current = self.current_spec()
        self.spec = new
        if self._index is not None and (new or IndexSpec.from_config(self._vectors.config)) == current:
            return
        self._index = self._cpu_index = None

    def attach_saved(self, info: dict[str, Any] | None, file: Path | None) -> None:
        """What a loaded bank's manifest says about its index, and the checked index file (or None)."""
        self.saved_info = info or None
        self.saved_file = file

    def invalidate(self) -> None:
        """The vectors changed: drop the built index, its info and the saved file."""
        self._index = self._cpu_index = self.info = None
        self.saved_file = None

    def release(self) -> None:
        """Drop the searchable index (GPU memory); the next search loads or builds it again."""
        if isinstance(self._index, TorchExactIndex):
            self._index.release()
        self._index = None

    @property
    def on_device(self) -> torch.device | None:
        """The torch device the torch backend searches on (queries there stay there); None for faiss."""
        return self._index.device if isinstance(self._index, TorchExactIndex) else None

    def ensure(self) -> faiss.Index | TorchExactIndex:
        """Load or build the index now (not on the first frame); returns the searchable index."""
        if self._index is None:
            if len(self._vectors) == 0:
                raise BankError("the bank is empty; add nominal frames before scoring")
            spec = self.current_spec()
            torch_index = self._torch_index(spec)
            if torch_index is not None:
                self._index, self._cpu_index = torch_index, None
                self.info = {
                    "type": "flat", "backend": "torch", "device": str(torch_index.device),
                    "dtype": str(torch_index.dtype).replace("torch.", ""), "num_vectors": len(self._vectors),
                    "recall_at_1": 1.0,
                }
                return torch_index
            index, info = self._saved_index(spec)
            if index is None:
                index, info = self._build_index(spec)
            gpu_index, info["device"] = maybe_to_gpu(index, spec.use_gpu)
            info["backend"] = "faiss"
            self._cpu_index = index if gpu_index is not index else None
            self._index, self.info = gpu_index, info
        return self._index

    def _torch_index(self, spec: IndexSpec) -> TorchExactIndex | None:
        """The torch backend when ``spec`` asks for it and the bank fits the device's memory budget.

        ``spec`` asks for it by name, or with ``auto`` on a CUDA device. Else None, with the reason
        among the bank's warnings.
        """
        if spec.backend == "faiss":
            return None
        try:
            device = resolve_search_device(spec.device)
            dtype = resolve_search_dtype(spec.dtype, device)
        except ConfigError as exc:
            self._vectors.warn(f"torch search unavailable ({exc}); searching with faiss on the host")
            return None
        if spec.backend == "auto" and device.type != "cuda":
            return None  # on the CPU faiss (BLAS flat, IVF, HNSW) is the engine
        fit = device_fit(
            len(self._vectors), self._vectors.dim, device, dtype, memory_fraction=spec.memory_fraction
        )
        if not fit.fits:
            self._vectors.warn(f"{fit.reason}; searching with faiss on the host instead")
            return None
        try:
            return TorchExactIndex(self._vectors.vectors, device=device, dtype=dtype)
        except ConfigError as exc:
            self._vectors.warn(f"{exc}; searching with faiss on the host instead")
            return None

    def _saved_index(self, spec: IndexSpec) -> tuple[faiss.Index | None, dict[str, Any]]:
        """The index a loaded bank saved, when it is what ``spec`` asks for; else (None, {})."""
        saved, n, dim = self.saved_info, len(self._vectors), self._vectors.dim
        if not saved or saved.get("num_vectors") != n or self.saved_file is None:
            return None, {}
        wanted = resolve_type(spec, n)
        # auto above its threshold accepts whichever candidate auto chose when the bank was built.
        same = saved.get("type") == wanted or (wanted == "auto" and saved.get("requested") == "auto")
        nlist = int(saved.get("params", {}).get("nlist", 0))
        if not same or (spec.nlist and spec.nlist != nlist):
            return None, {}
        try:
            index = faiss.read_index(str(self.saved_file))
        except RuntimeError as exc:
            self._vectors.warn(f"bank index {self.saved_file} cannot be read ({exc}); rebuilding the index")
            return None, {}
        if index.ntotal != n or index.d != dim:
            self._vectors.warn(
                f"bank index {self.saved_file} holds {index.ntotal} vectors of dim {index.d}, the bank "
                f"{n} of dim {dim}; rebuilding the index"
            )
            return None, {}
        info = dict(saved, loaded_from=str(self.saved_file))
        depth = spec.nprobe if saved["type"] in ("ivf", "ivfpq") else spec.ef_search
        if depth and depth != saved.get("search_depth"):
            # A depth set by the user: the build-time curve knows its recall if it was tried.
            set_search_depth(index, depth)
            info["search_depth"] = int(depth)
            info["recall_at_1"] = recall_from_curve(saved.get("recall_curve"), depth)
        return index, info

    def _build_index(self, spec: IndexSpec) -> tuple[faiss.Index, dict[str, Any]]:
        measure = True
        saved = self.saved_info
        n = len(self._vectors)
        if saved and saved.get("num_vectors") == n and saved.get("requested") == spec.type:
            # Same strategy as saved but no usable index file: rebuild what was saved (same type,
            # lists and search depth; seeded training) and keep the recall measured at build time.
            saved_nlist = int(saved.get("params", {}).get("nlist", 0))
            kept = {"type": saved["type"], "nlist": spec.nlist or saved_nlist}
            depth = saved.get("search_depth")
            if depth and not (spec.nprobe or spec.ef_search):
                kept["nprobe" if saved["type"] in ("ivf", "ivfpq") else "ef_search"] = int(depth)
                measure = False
            spec = dataclasses.replace(spec, **kept)
        probe = self.recall_probe(spec) if measure and is_approximate(spec, n) else None
        index, info = build_index(self._vectors.vectors, spec, measure_recall=measure, probe=probe)
        if saved and not measure:
            info["requested"] = saved["requested"]
            for key in ("recall_at_1", "recall_curve", "recall_probe"):
                info[key] = saved.get(key)
        return index, info

    def recall_probe(self, spec: IndexSpec, window: int | None = None) -> RecallProbe | None:
        """Recall probe queries: half held-out bank frames, half perturbed bank vectors.

        Half the queries: patches of up to 16 of the bank's frames, each searched with its
        neighbouring frames (within ``window`` messages, default the config's calibration_window)
        excluded, like a new pass of the same road; half: perturbed bank vectors. The tuned depth
        must satisfy both. None when too few frames are left to hold out.
        """
        bank = self._vectors
        if window is None:
            window = int(bank.config.get("calibration_window", 12))
        frame_ids = list(evenly_spaced(bank.num_frames, PROBE_FRAMES))
        per_frame = max(1, -(-(spec.recall_queries // 2) // max(len(frame_ids), 1)))
        rng = np.random.default_rng(spec.seed)
        queries, groups, start = [], [], 0
        for fid in frame_ids:
            exclude = bank.excluded_ranges(fid, window)
            if sum(b - a for a, b in exclude) >= len(bank):
                continue  # the window covers the whole bank: nothing left to find
            vecs = bank.frame_vectors(fid)
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
        return held_out.with_perturbed(bank.vectors, spec.recall_queries // 2, rng)

    # -- search -----------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int = 1, exclude: Sequence[tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product (= cosine) k-NN. ``exclude`` lists [start, stop) vector-id ranges to skip.

        Returns (similarities (n, k) float32, ids (n, k) int64); missing neighbours get
        similarity -1 and id -1.
        """
        index = self.ensure()
        dim, n = self._vectors.dim, len(self._vectors)
        if isinstance(index, TorchExactIndex):
            if queries.ndim != 2 or queries.shape[1] != dim:
                raise ValueError(f"queries must have shape (n, {dim}), got {tuple(queries.shape)}")
            return index.search(queries, min(int(k), n), exclude or None)
        if is_torch_tensor(queries):
            if not exclude and self._cpu_index is not None and queries.is_cuda:
                if queries.ndim != 2 or queries.shape[1] != dim:
                    raise ValueError(f"queries must have shape (n, {dim}), got {tuple(queries.shape)}")
                sims, ids = search_torch_tensor(index, queries, min(int(k), n))
                return np.where(ids < 0, -1.0, sims).astype(np.float32), ids
            queries = queries.detach().cpu().numpy()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"queries must have shape (n, {dim}), got {queries.shape}")
        k = min(int(k), n)
        if not exclude:
            sims, ids = index.search(queries, k)
        elif isinstance(index, faiss.IndexFlat):
            sims, ids = exact_search_excluding(index, queries, k, exclude)
        else:
            # ID selectors are CPU-only in faiss: a GPU index searches its CPU twin here.
            cpu = self._cpu_index if self._cpu_index is not None else index
            sims, ids = search_excluding(cpu, queries, k, exclude)
        sims = np.where(ids < 0, -1.0, sims).astype(np.float32)
        return sims, ids

    # -- persistence ------------------------------------------------------------------------
    def persisted_info(self) -> dict[str, Any] | None:
        """The manifest's ``index`` entry: what was built, else what was loaded for these vectors."""
        built = self.info if self.info and self.info.get("backend") != "torch" else None
        info = built or (
            self.saved_info
            if self.saved_info and self.saved_info.get("num_vectors") == len(self._vectors)
            else None
        )
        # Where this process found the index and which device it runs on are not facts about the bank.
        return None if info is None else {k: v for k, v in info.items() if k not in ("loaded_from", "device")}

    def write(self, target: Path) -> Path | None:
        """Write the approximate index built (or loaded) for exactly these vectors.

        Exact indexes are rebuilt in seconds from the embeddings and not worth their float32 bytes on disk.
        """
        info = self.info
        index = self._cpu_index if self._cpu_index is not None else self._index
        if isinstance(index, TorchExactIndex):
            index = None  # exact on the device: nothing to persist beyond the embeddings
        if index is None and self.saved_file is not None and self.saved_info:
            # Loaded and never searched: carry the saved file over unchanged.
            shutil.copyfile(self.saved_file, target)
        elif (
            index is not None and info and info.get("type") in APPROXIMATE_TYPES
            and index.ntotal == len(self._vectors)
        ):
            faiss.write_index(index, str(target))
        else:
            return None
        return target


__all__ = ["IndexedVectors", "PROBE_FRAMES", "SearchIndex", "is_torch_tensor"]
