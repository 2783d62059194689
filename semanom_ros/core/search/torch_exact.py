"""Exact k-NN over bank vectors held on a torch device: chunked matrix products with a max / top-k.

Why torch and not faiss on the GPU: faiss-gpu wheels are CUDA 12 only and do not install next to a
CUDA 13 torch, and after the backbone a frame's patch embeddings already sit on the GPU. With the
bank there too, one matrix product and a max per bank chunk leave only the (n, k) answers to cross
to the host (10^7 fp16 vectors x 448 queries in 14.7 ms on an H200, DESIGN.md). On the CPU the same
code runs in float32 (CPU float16 matrix products are slow); faiss stays the CPU engine there.

Answers follow faiss ``IndexFlatIP`` as :meth:`NominalBank.search` returns them, so a caller can
switch backends: similarities (n, k) float32 in decreasing order and ids (n, k) int64; a slot with
no neighbour (k larger than the bank, or every vector excluded) holds similarity -1 and id -1.
``exclude`` lists [start, stop) vector-id ranges to skip for every query of the call, as
leave-one-out calibration does with the vectors of the frames within ``calibration_window`` of the
scored frame (``NominalBank.excluded_ranges``).

Precision: float16 storage is lossless for a NominalBank (its vectors are float16 already);
bfloat16 keeps 8 mantissa bits (similarities off by up to ~4e-3). A half-precision product also
rounds its output (~2.4e-4 near 1), so ``rescore`` (on by default for half types) recomputes the k
chosen neighbours' similarities in float32: the values are exact for the ids returned, and only
near-ties within that rounding can pick another id than a float32 search would.

Memory: one (query chunk x bank chunk) block of similarities is held at a time, at most
``workspace_bytes``; :func:`device_fit` says whether the bank plus that workspace fits a device's
memory budget, and why not, so the caller can fall back to faiss and log the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError

SEARCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Similarity block per chunk: large on a GPU (fewer, wider products), cache-sized on a CPU.
DEFAULT_WORKSPACE_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}
# Bank chunks narrower than this underuse a GPU's matrix units: cut the query set first.
MIN_BANK_CHUNK = 4096
UPLOAD_ROWS = 1 << 16  # rows converted and copied to the device at a time (no full-size host copy)
DEFAULT_MEMORY_FRACTION = 0.9

Exclude = Sequence[tuple[int, int]]


def resolve_search_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is a ConfigError."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device: {device!r} is not one of auto, cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asks for CUDA but torch sees no GPU; use 'cpu' or 'auto'")
    return dev


def resolve_search_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` = float16 on a GPU, float32 on the CPU (where half-precision products are slow)."""
    if isinstance(dtype, torch.dtype) and dtype in SEARCH_DTYPES.values():
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in SEARCH_DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of auto, {', '.join(SEARCH_DTYPES)}")
    return SEARCH_DTYPES[dtype]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}: {value!r} must be a positive integer")
    return int(value)


def default_workspace_bytes(device: torch.device) -> int:
    return DEFAULT_WORKSPACE_BYTES["cuda" if device.type == "cuda" else "cpu"]


def plan_chunks(num_queries: int, num_vectors: int, itemsize: int, workspace_bytes: int) -> tuple[int, int]:
    """(query_chunk, bank_chunk) whose similarity block fits ``workspace_bytes``.

    All queries at once when that leaves bank chunks of at least MIN_BANK_CHUNK vectors (one
    frame's patches against wide slices of the bank); otherwise fewer queries per chunk.
    """
    elements = max(1, int(workspace_bytes) // int(itemsize))
    num_queries, num_vectors = max(1, int(num_queries)), max(1, int(num_vectors))
    bank_chunk = min(num_vectors, max(1, elements // num_queries))
    if bank_chunk >= min(num_vectors, MIN_BANK_CHUNK):
        return num_queries, bank_chunk
    bank_chunk = min(num_vectors, MIN_BANK_CHUNK, elements)
    return min(num_queries, max(1, elements // bank_chunk)), bank_chunk


def device_budget_bytes(device: torch.device, memory_fraction: float = DEFAULT_MEMORY_FRACTION) -> int:
    """``memory_fraction`` of what the device can still give.

    Free GPU memory (plus what torch's allocator holds unused), or the host's MemAvailable for the CPU.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    else:
        free = _host_available_bytes()
    return int(free * memory_fraction)


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True)
class DeviceFit:
    """Whether a bank fits a device for :class:`TorchExactIndex`; ``reason`` is a sentence to log."""

    fits: bool
    needed_bytes: int  # bank storage + search workspace
    budget_bytes: int
    device: str
    reason: str


def device_fit(
    num_vectors: int,
    dim: int,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    workspace_bytes: int | None = None,
    budget_bytes: int | None = None,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
) -> DeviceFit:
    """Whether an N x D bank, stored in ``dtype`` on ``device``, fits beside its search workspace.

    ``budget_bytes`` None = ``memory_fraction`` of what the device has free now
    (:func:`device_budget_bytes`); pass the budget the rest of the pipeline leaves, if known.
    """
    num_vectors, dim = _positive_int("num_vectors", num_vectors), _positive_int("dim", dim)
    if not 0.0 < float(memory_fraction) <= 1.0:
        raise ConfigError(f"memory_fraction: {memory_fraction!r} must be in (0, 1]")
    dev = resolve_search_device(device)
    torch_dtype = resolve_search_dtype(dtype, dev)
    if workspace_bytes is None:
        workspace_bytes = default_workspace_bytes(dev)
    workspace = _positive_int("workspace_bytes", workspace_bytes)
    itemsize = torch.tensor([], dtype=torch_dtype).element_size()
    bank = num_vectors * dim * itemsize
    needed = bank + workspace
    if budget_bytes is None:
        budget = device_budget_bytes(dev, memory_fraction)
        where = f"{memory_fraction:.0%} of what {dev} has free"
    else:
        budget = int(budget_bytes)
        where = f"the budget given for {dev}"
    name = str(torch_dtype).replace("torch.", "")
    what = (f"a bank of {num_vectors} x {dim} {name} vectors needs {bank / 2**30:.2f} GiB "
            f"+ {workspace / 2**30:.2f} GiB search workspace, {where} is {budget / 2**30:.2f} GiB")
    if needed <= budget:
        return DeviceFit(True, needed, budget, str(dev), f"{what}: exact torch search on {dev}")
    return DeviceFit(
        False, needed, budget, str(dev),
        f"{what}: it does not fit; search with faiss on the CPU instead "
        "(or lower workspace_bytes, store bfloat16/float16, or shrink the bank with a coreset)",
    )


def normalise_exclude(exclude: Exclude | np.ndarray | None, num_vectors: int) -> list[tuple[int, int]]:
    """Sorted, merged [start, stop) ranges clipped to the bank; ConfigError for malformed ones."""
    if exclude is None or len(exclude) == 0:
        return []
    ranges = []
    for item in exclude:
        try:
            start, stop = (int(v) for v in item)
        except (TypeError, ValueError):
            raise ConfigError(f"exclude: {item!r} is not a (start, stop) pair of vector ids") from None
        if start < 0 or stop < start:
            raise ConfigError(f"exclude: range ({start}, {stop}) must satisfy 0 <= start <= stop")
        start, stop = min(start, num_vectors), min(stop, num_vectors)
        if start < stop:
            ranges.append((start, stop))
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


class TorchExactIndex:
    """Exact inner-product k-NN over (N, D) vectors resident on a torch device.

    ``vectors``: a NumPy array (float16 memory-mapped is fine: copied UPLOAD_ROWS rows at a time)
    or a torch tensor (used as is, without a copy, when it already has the device and dtype).
    ``rescore`` None = on for float16 / bfloat16 (see the module docstring).
    """

    def __init__(
        self,
        vectors: np.ndarray | torch.Tensor,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        workspace_bytes: int | None = None,
        rescore: bool | None = None,
    ) -> None:
        self.device = resolve_search_device(device)
        self.dtype = resolve_search_dtype(dtype, self.device)
        if workspace_bytes is None:
            workspace_bytes = default_workspace_bytes(self.device)
        self.workspace_bytes = _positive_int("workspace_bytes", workspace_bytes)
        self.rescore = self.dtype != torch.float32 if rescore is None else bool(rescore)
        self._vectors = self._upload(vectors)
        self.ntotal, self.d = (int(v) for v in self._vectors.shape)

    def _upload(self, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
        is_tensor = isinstance(vectors, torch.Tensor)
        if not is_tensor:
            vectors = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
        shape = tuple(vectors.shape)
        floating = vectors.is_floating_point() if is_tensor else vectors.dtype.kind == "f"
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0 or not floating:
            raise ConfigError(
                f"vectors: need a non-empty (N, D) floating-point array of bank vectors, got shape {shape} "
                f"of {vectors.dtype}"
            )
        if is_tensor and vectors.device == self.device and vectors.dtype == self.dtype:
            return vectors.detach().contiguous()
        try:
            out = torch.empty(shape, dtype=self.dtype, device=self.device)
            for start in range(0, shape[0], UPLOAD_ROWS):
                block = vectors[start : start + UPLOAD_ROWS]
                source = block if is_tensor else torch.from_numpy(np.ascontiguousarray(block))
                out[start : start + len(block)].copy_(source)
        except torch.OutOfMemoryError:
            raise ConfigError(
                f"vectors: {shape[0]} x {shape[1]} {self.dtype} vectors do not fit on {self.device}; "
                "check device_fit() first and search with faiss when it says no"
            ) from None
        return out

    @property
    def nbytes(self) -> int:
        """Bytes the resident vectors take on the device."""
        return self._vectors.numel() * self._vectors.element_size()

    def __len__(self) -> int:
        return self.ntotal

    def _queries(self, queries: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(queries, torch.Tensor):
            tensor = queries.detach()
        else:
            array = np.asarray(queries)
            if array.dtype.kind not in "fiu":
                raise ConfigError(f"queries: need a numeric (n, {self.d}) array, got {array.dtype}")
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if tensor.ndim != 2 or tensor.shape[1] != self.d:
            raise ConfigError(f"queries: need shape (n, {self.d}), got {tuple(tensor.shape)}")
        return tensor.to(self.device, torch.float32)

    def search(
        self, queries: np.ndarray | torch.Tensor, k: int = 1, exclude: Exclude | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (n, k) float32, ids (n, k) int64) on the host; see :meth:`search_tensors`."""
        sims, ids = self.search_tensors(queries, k, exclude)
        return sims.cpu().numpy(), ids.cpu().numpy()

    @torch.inference_mode()
    def search_tensors(
        self, queries: np.ndarray | torch.Tensor, k: int = 1, exclude: Exclude | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest bank vectors of each query row by inner product, answers left on the device.

        ``queries`` (n, D): NumPy or a torch tensor on any device (a GPU tensor is not copied to
        the host). ``exclude``: [start, stop) id ranges skipped for every query. Missing
        neighbours: similarity -1, id -1.
        """
        k = _positive_int("k", k)
        ranges = normalise_exclude(exclude, self.ntotal)
        q32 = self._queries(queries)
        n = len(q32)
        sims = torch.full((n, k), -1.0, dtype=torch.float32, device=self.device)
        ids = torch.full((n, k), -1, dtype=torch.int64, device=self.device)
        if n == 0:
            return sims, ids
        itemsize = self._vectors.element_size()
        query_chunk, bank_chunk = plan_chunks(n, self.ntotal, itemsize, self.workspace_bytes)
        for q0 in range(0, n, query_chunk):
            part = q32[q0 : q0 + query_chunk]
            best_s, best_i = self._search_chunk(part.to(self.dtype), k, ranges, bank_chunk)
            if self.rescore:
                best_s, best_i = self._rescore(part, best_i)
            sims[q0 : q0 + len(part)] = torch.where(best_i >= 0, best_s, -1.0)
            ids[q0 : q0 + len(part)] = best_i
        return sims, ids

    def _search_chunk(
        self, queries: torch.Tensor, k: int, ranges: list[tuple[int, int]], bank_chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = len(queries)
        best_s = torch.full((m, k), -torch.inf, dtype=torch.float32, device=self.device)
        best_i = torch.full((m, k), -1, dtype=torch.int64, device=self.device)
        for start in range(0, self.ntotal, bank_chunk):
            stop = min(start + bank_chunk, self.ntotal)
            block = queries @ self._vectors[start:stop].T  # (m, stop - start) in the storage dtype
            for a, b in ranges:
                lo, hi = max(a, start), min(b, stop)
                if lo < hi:
                    block[:, lo - start : hi - start] = -torch.inf
            if k == 1:  # a max is one pass over the block; top-k needs several
                val, arg = block.max(dim=1)
                val = val.float()
                better = val > best_s[:, 0]
                best_s[:, 0] = torch.where(better, val, best_s[:, 0])
                best_i[:, 0] = torch.where(better, arg + start, best_i[:, 0])
            else:
                val, arg = block.topk(min(k, stop - start), dim=1)
                cand_s = torch.cat([best_s, val.float()], dim=1)
                cand_i = torch.cat([best_i, arg + start], dim=1)
                best_s, order = cand_s.topk(k, dim=1)
                best_i = cand_i.gather(1, order)
        best_i = torch.where(torch.isneginf(best_s), -1, best_i)
        return best_s, best_i

    def _rescore(self, queries: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 similarities of the chosen ids, re-sorted; rows in pieces within the workspace."""
        k = ids.shape[1]
        rows = max(1, self.workspace_bytes // (4 * k * self.d))
        out_s, out_i = [], []
        for r0 in range(0, len(ids), rows):
            chosen = ids[r0 : r0 + rows]
            vecs = self._vectors[chosen.clamp(min=0)].float()  # (r, k, D)
            exact = torch.bmm(vecs, queries[r0 : r0 + rows].unsqueeze(2)).squeeze(2)
            exact = exact.masked_fill(chosen < 0, -torch.inf)
            exact, order = exact.sort(dim=1, descending=True, stable=True)
            out_s.append(exact)
            out_i.append(chosen.gather(1, order))
        return torch.cat(out_s), torch.cat(out_i)

    def release(self) -> None:
        """Drop the device copy of the vectors (lifecycle cleanup frees GPU memory)."""
        self._vectors = torch.empty((0, self.d), dtype=self.dtype, device=self.device)
        self.ntotal = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "DeviceFit",
    "SEARCH_DTYPES",
    "TorchExactIndex",
    "default_workspace_bytes",
    "device_budget_bytes",
    "device_fit",
    "normalise_exclude",
    "plan_chunks",
    "resolve_search_device",
    "resolve_search_dtype",
]
