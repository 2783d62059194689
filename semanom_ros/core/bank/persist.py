"""A bank directory on disk: manifest, checksums, atomic save, checked load.

::

    manifest.json      format version, model id + weights fingerprint, input size, counts,
                       sources, calibration, per-file sizes and checksums, and manifest_sha256:
                       the checksum of the rest of the manifest (see :mod:`.schema`)
    embeddings.npy     (N, D) float16 unit vectors (memory-mapped on load)
    vector_meta.npy    (N,) structured: frame (global frame id), row, col
    frames.npy         (F,) structured: source, index (message ordinal), stamp_ns, vec_start, vec_count,
                       grid_h, grid_w
    index.faiss        the approximate (IVF / HNSW) index, when one was built: rebuilding HNSW over
                       1e6 vectors takes minutes, reading it back seconds. Derived data: a missing,
                       corrupt or mismatched index file is rebuilt (with a warning), never fatal.

Saving writes a sibling temporary directory and swaps it in with one rename, so an interrupted
save leaves the previous bank exactly as it was.

Loading checks, each failure a :class:`BankError` naming the file and the fix: the manifest's own
checksum and every key the loader reads (:mod:`.schema`); each array file's size, and its blake2b
for banks under 512 MB (all of them with ``verify=True``); the arrays' dtypes and shapes against
the manifest; the frame table against the vectors; and that every vector is finite, so a NaN
cannot make every frame score 2.0.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from ..errors import BankError
from .schema import (
    ARRAY_FILES,
    BANK_FORMAT_VERSION,
    DIGEST_KEY,
    INDEX_FILE,
    check_manifest,
    manifest_digest,
)
from .signature import ModelSignature

MANIFEST = "manifest.json"
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
# Checksums are verified by default below this total size (hashing runs at about 1 GB/s).
VERIFY_DEFAULT_MAX_BYTES = 512 * 2**20
# The finiteness check reads the vectors in pieces of about this size (one temporary buffer).
FINITE_CHECK_CHUNK_BYTES = 16 * 2**20
_FLOAT16_EXPONENT = 0x7C00  # all exponent bits set: inf or NaN


@dataclass
class BankFiles:
    """A bank directory read and checked: its manifest, model signature, arrays and index file."""

    manifest: dict[str, Any]
    signature: ModelSignature
    vectors: np.ndarray
    vector_meta: np.ndarray
    frames: np.ndarray
    index_file: Path | None  # None when absent or not matching the manifest (then in warnings)
    warnings: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # what was checked, one line each (semanom-bank info --verify)


def write_bank_dir(
    path: str | Path,
    arrays: Sequence[tuple[str, Callable[[BinaryIO], None]]],
    write_index: Callable[[Path], Path | None],
    manifest: Callable[[], dict[str, Any]],
) -> Path:
    """Write a bank atomically: the old bank at ``path`` stays intact until the swap.

    ``arrays`` are (file name, writer of its .npy bytes); ``write_index(target)`` writes the index
    file or returns None; ``manifest()`` is the manifest without its ``files`` entry and checksum.
    """
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, write in arrays:
            target = tmp / name
            with open(target, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            files[name] = {"bytes": target.stat().st_size, "blake2b": file_digest(target)}
        index_written = write_index(tmp / INDEX_FILE)
        if index_written:
            with open(index_written, "rb+") as fh:
                os.fsync(fh.fileno())
            files[INDEX_FILE] = {"bytes": index_written.stat().st_size, "blake2b": file_digest(index_written)}
        content = manifest()
        content["files"] = files
        # The checksum covers what a reader parses back, so it is taken over the JSON round trip.
        body = json.loads(json.dumps(content, default=_json_default))
        body[DIGEST_KEY] = manifest_digest(body)
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(body, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_bank_dir(
    path: str | Path, *, mmap: bool = True, verify: bool | None = None, strict: bool = False
) -> BankFiles:
    """Read and check a bank directory; raises BankError saying what is missing or corrupt.

    ``verify`` checks file checksums (default: for banks under 512 MB); the manifest's checksum
    and keys, sizes, shapes, the frame table and finiteness are always checked, so a truncated
    or NaN-filled file never loads. A damaged index file is derived data, rebuilt with a warning,
    unless ``strict`` (then it is a BankError too).
    """
    path = Path(path).expanduser()
    manifest, version = load_manifest(path)
    checks = [
        f"{MANIFEST}: format {version}, "
        + (f"{DIGEST_KEY} matches" if version == BANK_FORMAT_VERSION else "no manifest checksum (legacy format)")
        + ", every key has its type"
    ]
    warnings: list[str] = []
    files: dict[str, Any] = manifest.get("files") or {}
    if version != BANK_FORMAT_VERSION:
        warnings.append(
            f"bank {path} is in format version {version}: its manifest has no checksum"
            + ("" if files else " and no file checksums (they were skipped)")
            + f"; it loads, but re-save it in format {BANK_FORMAT_VERSION} with 'semanom-bank upgrade {path}'"
        )
    if verify is None:
        total = sum(int(f["bytes"]) for f in files.values())
        verify = total < VERIFY_DEFAULT_MAX_BYTES
    arrays = [_read_array(path, name, files.get(name), mmap, verify, checks) for name in ARRAY_FILES]
    vectors, vmeta, frames = arrays
    m = manifest["model"]
    sig = ModelSignature(
        model=m["model"],
        fingerprint=m["fingerprint"],
        input_height=m["input_height"],
        dim=m["dim"],
        patch_size=m.get("patch_size", 14),
        feature_layer=m.get("feature_layer", 0),
    )
    _check_array_layout(path, manifest, sig, vectors, vmeta, frames)
    checks.append(
        f"arrays: {len(vectors)} vectors of dim {sig.dim} (float16), {len(frames)} frames, as the manifest says"
    )
    check_frame_table(path, frames, vmeta, len(vectors), len(manifest.get("sources") or []))
    checks.append("frame table: each frame's vectors follow the previous frame's; sources and frame ids in range")
    bad = first_non_finite_row(vectors)
    if bad is not None:
        raise BankError(
            f"bank file {path / ARRAY_FILES[0]}: vector {bad} (frame {int(vmeta['frame'][bad])}) holds NaN or inf; "
            "it would make every frame score 2.0. The bank is damaged: rebuild it (or restore a copy)"
        )
    checks.append(f"vectors: all {len(vectors)} x {sig.dim} values finite")
    index_file, index_warnings = _checked_index_file(path, files.get(INDEX_FILE), verify)
    if strict and index_warnings:
        raise BankError(
            f"{index_warnings[0]} (as every load would); 'semanom-bank upgrade {path}' saves a rebuilt one"
        )
    if files.get(INDEX_FILE):
        checks.append(
            f"{INDEX_FILE}: " + ("unusable, will be rebuilt" if index_file is None else
                                 f"{files[INDEX_FILE]['bytes']} bytes" + (", blake2b matches" if verify else ""))
        )
    return BankFiles(manifest, sig, vectors, vmeta, frames, index_file, warnings + index_warnings, checks)


def load_manifest(path: str | Path) -> tuple[dict[str, Any], int]:
    """The checked manifest of the bank directory ``path`` and its format version.

    Raises BankError when the directory or manifest is missing, unreadable, fails its checksum
    or lacks / mistypes a key (:mod:`.schema`).
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
        manifest = json.loads(manifest_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BankError(f"bank manifest {manifest_path} is corrupt: {_one_line(exc)}") from None
    except (OSError, RecursionError) as exc:
        raise BankError(f"bank manifest {manifest_path} cannot be read: {_one_line(exc)}") from None
    version = check_manifest(manifest, manifest_path)
    return manifest, version


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest alone (for 'info' and compatibility checks without loading vectors)."""
    return load_manifest(path)[0]


def first_non_finite_row(vectors: np.ndarray) -> int | None:
    """Row of the first vector holding NaN or inf, else None.

    float16 vectors (the bank's) are checked on their bit patterns in chunks of about 16 MB: one
    pass, one small buffer, so a memory-mapped bank is read once, piece by piece, and never
    copied whole.
    """
    if vectors.size == 0:
        return None
    row_bytes = max(1, vectors[0].nbytes)
    step = max(1, FINITE_CHECK_CHUNK_BYTES // row_bytes)
    if vectors.dtype != np.float16:
        for start in range(0, len(vectors), step):
            ok = np.isfinite(vectors[start : start + step]).reshape(min(step, len(vectors) - start), -1).all(axis=1)
            if not ok.all():
                return start + int(np.argmin(ok))
        return None
    bits = vectors.view(np.uint16)
    buffer = np.empty((step, *bits.shape[1:]), np.uint16)
    for start in range(0, len(bits), step):
        chunk = bits[start : start + step]
        masked = np.bitwise_and(chunk, _FLOAT16_EXPONENT, out=buffer[: len(chunk)])
        if masked.max() == _FLOAT16_EXPONENT:
            bad = (masked == _FLOAT16_EXPONENT).reshape(len(chunk), -1).any(axis=1)
            return start + int(np.argmax(bad))
    return None


def check_frame_table(path: Path, frames: np.ndarray, vector_meta: np.ndarray, num_vectors: int,
                      num_sources: int) -> None:
    """Check the frame table against the vectors; raises BankError naming the first bad frame.

    Each frame's vectors start where the previous frame's end and add up to ``num_vectors``;
    sources and the vectors' frame ids are in range.
    """
    where = path / ARRAY_FILES[2]
    counts = frames["vec_count"].astype(np.int64)
    starts = frames["vec_start"].astype(np.int64)
    expected = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(frames) else starts
    bad = np.flatnonzero((counts < 0) | (starts != expected))
    if len(bad):
        i = int(bad[0])
        raise BankError(
            f"bank file {where} is damaged: frame {i} claims vectors [{starts[i]}, {starts[i] + counts[i]}), "
            f"its predecessors end at {expected[i]}; rebuild the bank"
        )
    if int(counts.sum()) != num_vectors:
        raise BankError(
            f"bank file {where} is damaged: its frames hold {int(counts.sum())} vectors, the bank {num_vectors}; "
            "rebuild the bank"
        )
    sources = frames["source"]
    bad = np.flatnonzero((sources < 0) | (sources >= num_sources))
    if len(bad):
        i = int(bad[0])
        raise BankError(
            f"bank file {where} is damaged: frame {i} names source {int(sources[i])}, the manifest lists "
            f"{num_sources}; rebuild the bank"
        )
    frame_ids = vector_meta["frame"]
    step = max(1, FINITE_CHECK_CHUNK_BYTES // 4)
    for start in range(0, len(frame_ids), step):
        chunk = frame_ids[start : start + step]
        if chunk.min() < 0 or chunk.max() >= len(frames):
            row = start + int(np.argmax((chunk < 0) | (chunk >= len(frames))))
            raise BankError(
                f"bank file {path / ARRAY_FILES[1]} is damaged: vector {row} names frame {int(frame_ids[row])}, "
                f"the bank has {len(frames)}; rebuild the bank"
            )


def _read_array(path: Path, name: str, expected: dict[str, Any] | None, mmap: bool, verify: bool,
                checks: list[str]) -> np.ndarray:
    """One array file, its size (and with ``verify`` its checksum) checked against the manifest."""
    fpath = path / name
    if not fpath.is_file():
        raise BankError(f"bank {path} is missing {name}; restore the bank or rebuild it")
    size = fpath.stat().st_size
    if expected is not None and size != expected["bytes"]:
        raise BankError(f"bank file {fpath} is truncated or altered: {size} bytes, manifest says {expected['bytes']}")
    hashed = verify and expected is not None
    if hashed and file_digest(fpath) != expected["blake2b"]:
        raise BankError(f"bank file {fpath} is corrupt: checksum differs from the manifest")
    try:
        array = np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for a damaged .npy
        raise BankError(f"bank file {fpath} cannot be read: {_one_line(exc)}") from None
    if not isinstance(array, np.ndarray):
        raise BankError(f"bank file {fpath} is not a .npy array")
    if expected is None:
        state = "no checksum recorded (legacy format)"
    elif hashed:
        state = "blake2b matches"
    else:
        state = "blake2b not checked (bank over 512 MB; 'semanom-bank info --verify' checks it)"
    checks.append(f"{name}: {size} bytes as recorded, {state}")
    return array


def _check_array_layout(path: Path, manifest: dict[str, Any], sig: ModelSignature, vectors: np.ndarray,
                        vmeta: np.ndarray, frames: np.ndarray) -> None:
    """Check the dtypes and shapes of the three arrays against the format and the manifest's counts."""
    for name, array, dtype, ndim in zip(ARRAY_FILES, (vectors, vmeta, frames),
                                        (np.dtype(np.float16), VECTOR_META_DTYPE, FRAME_DTYPE), (2, 1, 1)):
        if array.dtype != dtype or array.ndim != ndim:
            raise BankError(
                f"bank file {path / name} holds a {array.ndim}-d {array.dtype} array, expected {ndim}-d {dtype}; "
                "rebuild the bank"
            )
    n, num_frames = manifest["num_vectors"], manifest["num_frames"]
    if vectors.shape != (n, sig.dim) or len(vmeta) != n or len(frames) != num_frames:
        raise BankError(
            f"bank {path} is inconsistent: embeddings {vectors.shape}, metadata {len(vmeta)}, "
            f"frames {len(frames)} vs manifest {n} vectors of dim {sig.dim}, {num_frames} frames"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _checked_index_file(path: Path, expected: dict[str, Any] | None, verify: bool) -> tuple[Path | None, list[str]]:
    """The bank's index.faiss when the manifest lists it and it matches; else None and a warning."""
    if not expected:
        return None, []
    fpath = path / INDEX_FILE
    if not fpath.is_file():
        return None, [f"bank {path} lists {INDEX_FILE} but it is missing; the index will be rebuilt"]
    size = fpath.stat().st_size
    if size != expected.get("bytes"):
        return None, [
            f"bank index {fpath} is {size} bytes, the manifest says {expected.get('bytes')}; rebuilding the index"
        ]
    if verify and file_digest(fpath) != expected.get("blake2b"):
        return None, [f"bank index {fpath} is corrupt (checksum differs from the manifest); rebuilding the index"]
    return fpath, []


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


def file_digest(path: Path) -> str:
    """blake2b (16 bytes, hex) of a file's contents, as recorded in the manifest."""
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


__all__ = [
    "ARRAY_FILES",
    "BANK_FORMAT_VERSION",
    "BankFiles",
    "FRAME_DTYPE",
    "INDEX_FILE",
    "MANIFEST",
    "VECTOR_META_DTYPE",
    "VERIFY_DEFAULT_MAX_BYTES",
    "check_frame_table",
    "file_digest",
    "first_non_finite_row",
    "load_manifest",
    "read_bank_dir",
    "read_manifest",
    "write_bank_dir",
]
