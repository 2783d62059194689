"""One CPU thread count for torch and faiss."""
from __future__ import annotations

import os

import faiss


def resolve_num_threads(num_threads: int) -> int:
    """0 = ``OMP_NUM_THREADS`` when set, else every core this process may use; never more than that."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    if num_threads <= 0:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        return min(int(env), available) if env.isdigit() and int(env) > 0 else available
    return min(int(num_threads), available)


def configure_threads(num_threads: int) -> int:
    """Give torch and faiss the same thread count (they run one after the other, never together).

    Each library has its own OpenMP runtime (faiss bundles its libgomp, torch its own); running
    both at full width one after the other is fine, but a thread count above the core count makes
    them oversubscribe, which on this 2-core machine multiplies latency. Returns the count set.
    """
    n = resolve_num_threads(num_threads)
    faiss.omp_set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # torch-free tools (bank inspection) still get faiss pinned
        pass
    return n


__all__ = ["configure_threads", "resolve_num_threads"]
