"""Give memory back to the operating system after an unusually large frame.

glibc keeps freed heap memory for reuse: after one large frame (its message, decoded copy, resized
copies and maps) a node's resident size would stay hundreds of MB above its steady state. Two
measures, both no-ops elsewhere (musl, macOS):

* :func:`bound_heap_growth` fixes glibc's mmap threshold. By default it adapts: once a huge block
  (the decoded 12000x12000 frame) is freed, blocks up to 32 MB come from the heap afterwards, and a
  worker thread's heap kept them (measured: +32 MB after one shrunk 12000x12000 frame, despite
  malloc_trim). Fixed at 16 MB, larger blocks are always mapped and unmapped when freed.
* :func:`release_memory` (``malloc_trim(0)``) returns the free pages of every arena after a large frame.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache
from typing import Any

__all__ = ["LARGE_FRAME_BYTES", "MMAP_THRESHOLD_BYTES", "bound_heap_growth", "release_memory", "resident_mb"]

# A frame whose message or decoded array is larger than this is followed by release_memory()
# (a 1920x1080 rgb8 frame is 6.2 MB: normal frames never pay for the trim).
LARGE_FRAME_BYTES = 64 * 1024 * 1024
# Blocks above this are mmap'ed (a 1080p frame's largest block, its float32 score map, is 8.3 MB).
MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


@lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _glibc_function(name: str, argtypes: list[Any]) -> Any:
    function = getattr(_libc(), name, None)
    if function is not None:
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    return function


def bound_heap_growth(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for the whole process (see the module docstring); True when set."""
    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)) == 1)


def release_memory() -> bool:
    """Collect garbage, then hand free heap pages back to the OS; True when malloc_trim ran."""
    gc.collect()
    trim = _glibc_function("malloc_trim", [ctypes.c_size_t])
    if trim is None:
        return False
    trim(0)
    return True


def resident_mb() -> float:
    """This process's resident set size (VmRSS) in MB; NaN where /proc is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
