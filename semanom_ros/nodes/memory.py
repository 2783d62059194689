"""Give memory back to the operating system after an unusually large frame.

glibc keeps freed heap memory for reuse: after one large frame (its message, decoded copy, resized
copies and maps) a node's resident size would stay hundreds of MB above its steady state.
``malloc_trim(0)`` returns the free pages of every arena; elsewhere (musl, macOS) this is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache
from typing import Any

__all__ = ["LARGE_FRAME_BYTES", "release_memory", "resident_mb"]

# A frame whose message or decoded array is larger than this is followed by release_memory()
# (a 1920x1080 rgb8 frame is 6.2 MB: normal frames never pay for the trim).
LARGE_FRAME_BYTES = 64 * 1024 * 1024


@lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> bool:
    """Collect garbage, then hand free heap pages back to the OS; True when malloc_trim ran."""
    gc.collect()
    trim = _malloc_trim()
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
