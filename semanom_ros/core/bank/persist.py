"""A bank directory on disk: manifest, checksums, atomic save, checked load.

::

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
from .signature import ModelSignature

BANK_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAY_FILES = ("embeddings.npy", "vector_meta.npy", "frames.npy")
INDEX_FILE = "index.faiss"


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


def write_bank_dir(
    path: str | Path,
    arrays: Sequence[tuple[str, Callable[[BinaryIO], None]]],
    write_index: Callable[[Path], Path | None],
    manifest: Callable[[], dict[str, Any]],
) -> Path:
    """Write a bank atomically: the old bank at ``path`` stays intact until the swap.

    ``arrays`` are (file name, writer of its .npy bytes); ``write_index(target)`` writes the index
    file or returns None; ``manifest()`` is the manifest without its ``files`` entry.
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
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(content, fh, indent=2, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_bank_dir(path: str | Path, *, mmap: bool = True, verify: bool | None = None) -> BankFiles:
    """Read and check a bank directory; raises BankError saying what is missing or corrupt.

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
    for name in ARRAY_FILES:
        fpath = path / name
        if not fpath.is_file():
            raise BankError(f"bank {path} is missing {name}")
        expected = files.get(name, {})
        size = fpath.stat().st_size
        if "bytes" in expected and size != expected["bytes"]:
            raise BankError(f"bank file {fpath} is truncated or altered: {size} bytes, manifest says {expected['bytes']}")
        if verify and "blake2b" in expected and file_digest(fpath) != expected["blake2b"]:
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
    index_file, warnings = _checked_index_file(path, files.get(INDEX_FILE), verify)
    return BankFiles(manifest, sig, vectors, vmeta, frames, index_file, warnings)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest alone (for 'info' and compatibility checks without loading vectors)."""
    manifest_path = Path(path).expanduser() / MANIFEST
    try:
        return json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise BankError(f"{manifest_path} does not exist: not a semanom_ros bank") from None
    except json.JSONDecodeError as exc:
        raise BankError(f"bank manifest {manifest_path} is corrupt: {exc}") from None


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
    "INDEX_FILE",
    "MANIFEST",
    "file_digest",
    "read_bank_dir",
    "read_manifest",
    "write_bank_dir",
]
