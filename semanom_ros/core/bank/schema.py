"""The bank manifest's schema and its own checksum.

Every key the loader and the tools read is checked here, so a damaged or hand-edited manifest
fails with a :class:`BankError` naming the file, the key, what was expected and what was found,
never with a KeyError or ValueError from deep inside the loader.

The manifest protects itself with ``manifest_sha256``: SHA-256 of the canonical JSON (sorted keys,
no spaces) of every other key. It lives inside the manifest rather than in a sidecar file because
the manifest is the one file the atomic save writes last and swaps in with the arrays; a sidecar
could go missing or stale on its own. Removing the key is no way round it: format version 2
requires it (and the ``files`` table), so only the previous format may lack them.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import BankError

FORMAT_NAME = "semanom_ros.bank"
# 2: the manifest carries manifest_sha256 and a mandatory files table; 1: neither was checked.
BANK_FORMAT_VERSION = 2
LEGACY_FORMAT_VERSIONS = (1,)
DIGEST_KEY = "manifest_sha256"
ARRAY_FILES = ("embeddings.npy", "vector_meta.npy", "frames.npy")
INDEX_FILE = "index.faiss"
SOURCE_KEYS = ("name", "topic", "first_stamp_ns", "last_stamp_ns", "frames")

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_DEPTH = 1 << 20  # IndexSpec's bound on nlist, nprobe and search depths


def manifest_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a manifest without its ``manifest_sha256`` key."""
    content = {k: v for k, v in body.items() if k != DIGEST_KEY}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# -- value predicates ------------------------------------------------------------------------
def is_int(value: Any, low: int | None = None) -> bool:
    """An integer (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_opt_int(value: Any) -> bool:
    return value is None or is_int(value)


def _is_depth(value: Any) -> bool:
    return is_int(value, 0) and value <= _MAX_DEPTH


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(is_number(v) for v in value)


def describe_value(value: Any) -> str:
    """What was found, short enough for a one-line error."""
    kinds = {bool: "the boolean", int: "the integer", float: "the number", str: "the string", type(None): "null"}
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:6]}" + (" ..." if len(value) > 6 else "")
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return "null" if value is None else f"{kinds.get(type(value), type(value).__name__)} {text}"


class ManifestChecker:
    """Checks one manifest's keys; each failure is a BankError naming file, key, expected and found."""

    def __init__(self, manifest_path: Path) -> None:
        self.path = manifest_path

    def fail(self, key: str, expected: str, found: str) -> BankError:
        return BankError(f"bank manifest {self.path}: key {key!r}: expected {expected}, found {found}")

    def need(
        self,
        obj: Mapping[str, Any],
        key: str,
        expected: str,
        test: Callable[[Any], bool],
        *,
        prefix: str = "",
        required: bool = True,
    ) -> Any:
        """``obj[key]`` when it passes ``test``; a missing key is an error only when ``required``."""
        name = f"{prefix}{key}"
        if key not in obj:
            if required:
                raise self.fail(name, expected, "no such key")
            return None
        value = obj[key]
        if not test(value):
            raise self.fail(name, expected, describe_value(value))
        return value

    # -- sections -----------------------------------------------------------------------------
    def check(self, manifest: Any) -> int:
        """Check a parsed manifest; returns its format version (current or legacy)."""
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise BankError(f"{self.path} is not a semanom_ros bank manifest (no \"format\": \"{FORMAT_NAME}\")")
        version = manifest.get("format_version")
        if not is_int(version) or (version != BANK_FORMAT_VERSION and version not in LEGACY_FORMAT_VERSIONS):
            if is_int(version) and version > BANK_FORMAT_VERSION:
                raise BankError(
                    f"bank manifest {self.path}: format version {version} is newer than this semanom_ros reads "
                    f"({BANK_FORMAT_VERSION}); update semanom_ros"
                )
            raise BankError(
                f"bank manifest {self.path}: key 'format_version': expected {BANK_FORMAT_VERSION} "
                f"(or legacy {', '.join(map(str, LEGACY_FORMAT_VERSIONS))}), found {describe_value(version)}; "
                "rebuild the bank"
            )
        current = version == BANK_FORMAT_VERSION
        if current:
            self.check_digest(manifest)
        self.check_body(manifest, current)
        return version

    def check_digest(self, manifest: Mapping[str, Any]) -> None:
        recorded = self.need(manifest, DIGEST_KEY, "64 hex digits (SHA-256 of the rest of the manifest)",
                             lambda v: isinstance(v, str) and bool(_HEX64.fullmatch(v)))
        if manifest_digest(manifest) != recorded:
            raise BankError(
                f"bank manifest {self.path} is corrupt or was edited: its content does not match its "
                f"{DIGEST_KEY}; restore the bank, or rebuild it (change settings with 'semanom-bank calibrate', "
                "never by editing manifest.json)"
            )

    def check_body(self, m: Mapping[str, Any], current: bool) -> None:
        """Every top-level key; the previous format may lack the ones its loader defaulted."""
        model = self.need(m, "model", "an object (model, fingerprint, input_height, dim, patch_size)",
                          lambda v: isinstance(v, dict))
        self.check_model(model, current)
        self.need(m, "num_vectors", "an integer >= 0", lambda v: is_int(v, 0))
        self.need(m, "num_frames", "an integer >= 0", lambda v: is_int(v, 0))
        self.need(m, "dim", f"the integer {model['dim']} (model.dim)", lambda v: is_int(v) and v == model["dim"],
                  required=current)
        self.need(m, "kind", "a non-empty string (patch, instance, global)", _is_str, required=current)
        self.need(m, "embedding_dtype", "'float16'", lambda v: v == "float16", required=current)
        sources = self.need(m, "sources", "a list of source objects", lambda v: isinstance(v, list), required=current)
        for i, source in enumerate(sources or []):
            self.check_source(source, f"sources[{i}].")
        cal = self.need(m, "calibration", "null or a calibration object", lambda v: v is None or isinstance(v, dict),
                        required=current)
        if cal:
            self.check_calibration(cal)
        self.need(m, "config", "an object (the pipeline settings)", lambda v: isinstance(v, dict), required=current)
        self.need(m, "extra", "null or an object", lambda v: v is None or isinstance(v, dict), required=current)
        index = self.need(m, "index", "null or an index object", lambda v: v is None or isinstance(v, dict),
                          required=current)
        if index:
            self.check_index(index)
        for key in ("created_unix_ns", "saved_unix_ns"):
            self.need(m, key, "an integer >= 0", lambda v: is_int(v, 0), required=current)
        files = self.need(m, "files", f"an object with the bytes and blake2b of {', '.join(ARRAY_FILES)}",
                          lambda v: isinstance(v, dict), required=current)
        if files is not None:
            self.check_files(files)

    def check_model(self, model: Mapping[str, Any], current: bool) -> None:
        self.need(model, "model", "a non-empty string (hub id or folder)", _is_str, prefix="model.")
        self.need(model, "fingerprint", "a non-empty string", _is_str, prefix="model.")
        for key in ("input_height", "dim"):
            self.need(model, key, "an integer >= 1", lambda v: is_int(v, 1), prefix="model.")
        self.need(model, "patch_size", "an integer >= 1", lambda v: is_int(v, 1), prefix="model.", required=current)
        self.need(model, "feature_layer", "an integer >= 0", lambda v: is_int(v, 0), prefix="model.", required=False)

    def check_source(self, source: Any, prefix: str) -> None:
        if not isinstance(source, dict):
            raise self.fail(prefix.rstrip("."), "an object", describe_value(source))
        unknown = sorted(set(source) - set(SOURCE_KEYS))
        if unknown:
            raise self.fail(f"{prefix}{unknown[0]}", f"only the keys {', '.join(SOURCE_KEYS)}", "an unknown key")
        self.need(source, "name", "a non-empty string", _is_str, prefix=prefix)
        self.need(source, "topic", "null or a string", lambda v: v is None or isinstance(v, str), prefix=prefix,
                  required=False)
        for key in ("first_stamp_ns", "last_stamp_ns"):
            self.need(source, key, "null or an integer", _is_opt_int, prefix=prefix, required=False)
        self.need(source, "frames", "an integer >= 0", lambda v: is_int(v, 0), prefix=prefix, required=False)

    def check_calibration(self, cal: Mapping[str, Any]) -> None:
        """What the monitor, ``threshold_for_alpha`` and ``semanom-bank info`` read from a calibration."""
        p = "calibration."
        self.need(cal, "threshold", "a finite number", is_number, prefix=p)
        self.need(cal, "alpha", "a number in (0, 1)", lambda v: is_number(v) and 0 < v < 1, prefix=p, required=False)
        self.need(cal, "level", "'patch' or 'image'", lambda v: v in ("patch", "image"), prefix=p, required=False)
        self.need(cal, "k", "an integer >= 1", lambda v: is_int(v, 1), prefix=p, required=False)
        self.need(cal, "window", "an integer >= 0", lambda v: is_int(v, 0), prefix=p, required=False)
        self.need(cal, "smoothing_sigma", "null or a number >= 0", lambda v: v is None or (is_number(v) and v >= 0),
                  prefix=p, required=False)
        self.need(cal, "score_normalization", "null, 'none' or 'median'", lambda v: v in (None, "none", "median"),
                  prefix=p, required=False)
        self.need(cal, "holdout", "'window', 'source' or 'drive'", lambda v: v in ("window", "source", "drive"),
                  prefix=p, required=False)
        self.need(cal, "warning", "a string", lambda v: isinstance(v, str), prefix=p, required=False)
        drive = self.need(cal, "drive", "an object (path, frames)", lambda v: isinstance(v, dict), prefix=p,
                          required=False)
        if drive:
            self.need(drive, "path", "a non-empty string", _is_str, prefix=f"{p}drive.")
            self.need(drive, "frames", "an integer >= 1", lambda v: is_int(v, 1), prefix=f"{p}drive.")
        for key in ("frames_scored", "patches_scored", "sources"):
            self.need(cal, key, "an integer >= 0", lambda v: is_int(v, 0), prefix=p, required=False)
        views = self.need(cal, "views", "a list of calibration objects (one per crop view)",
                          lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), prefix=p,
                          required=False)
        for view in views or []:
            self.check_calibration(view)
        for level in ("patch", "image"):
            key = f"{level}_scores"
            scores = self.need(cal, key, "an object (min, max, mean, quantiles, table)",
                               lambda v: isinstance(v, dict), prefix=p, required=False)
            if scores:
                self.check_scores(scores, f"{p}{key}.")

    def check_scores(self, scores: Mapping[str, Any], prefix: str) -> None:
        for key in ("min", "max", "mean"):
            self.need(scores, key, "a finite number", is_number, prefix=prefix, required=False)
        self.need(scores, "quantiles", "an object of finite numbers",
                  lambda v: isinstance(v, dict) and all(is_number(x) for x in v.values()), prefix=prefix,
                  required=False)
        table = self.need(scores, "table", "an object with lists q and value", lambda v: isinstance(v, dict),
                          prefix=prefix, required=False)
        if table is None:
            return
        q = self.need(table, "q", "a non-empty ascending list of finite numbers in [0, 1]",
                      lambda v: _is_number_list(v) and all(0 <= x <= 1 for x in v)
                      and all(a <= b for a, b in zip(v, v[1:])), prefix=f"{prefix}table.")
        self.need(table, "value", f"a list of {len(q)} finite numbers",
                  lambda v: _is_number_list(v) and len(v) == len(q), prefix=f"{prefix}table.")

    def check_index(self, index: Mapping[str, Any]) -> None:
        """What SearchIndex reads back from the manifest's ``index`` entry."""
        p = "index."
        self.need(index, "type", "an index type name", _is_str, prefix=p)
        self.need(index, "requested", "an index type name", _is_str, prefix=p, required=False)
        self.need(index, "num_vectors", "an integer >= 0", lambda v: is_int(v, 0), prefix=p, required=False)
        params = self.need(index, "params", "an object", lambda v: isinstance(v, dict), prefix=p, required=False)
        # Bounded as IndexSpec bounds them: a rebuilt index takes these values.
        if params:
            self.need(params, "nlist", f"an integer in [0, {_MAX_DEPTH}]", _is_depth, prefix=f"{p}params.",
                      required=False)
        self.need(index, "search_depth", f"null or an integer in [0, {_MAX_DEPTH}]",
                  lambda v: v is None or _is_depth(v), prefix=p, required=False)
        self.need(index, "recall_at_1", "null or a number", lambda v: v is None or is_number(v), prefix=p,
                  required=False)
        self.need(index, "recall_curve", "null or a list of [depth, recall] pairs",
                  lambda v: v is None or (isinstance(v, list) and all(
                      isinstance(pair, list) and len(pair) == 2 and all(is_number(x) for x in pair) for pair in v)),
                  prefix=p, required=False)

    def check_files(self, files: Mapping[str, Any]) -> None:
        unknown = sorted(set(files) - {*ARRAY_FILES, INDEX_FILE})
        if unknown:
            raise self.fail(f"files.{unknown[0]}", f"only entries for {', '.join((*ARRAY_FILES, INDEX_FILE))}",
                            "an unknown file")
        for name in (*ARRAY_FILES, INDEX_FILE):
            entry = self.need(files, name, "an object with bytes and blake2b", lambda v: isinstance(v, dict),
                              prefix="files.", required=name != INDEX_FILE)
            if entry is None:
                continue
            self.need(entry, "bytes", "an integer >= 0", lambda v: is_int(v, 0), prefix=f"files.{name}.")
            self.need(entry, "blake2b", "32 hex digits", lambda v: isinstance(v, str) and bool(_HEX32.fullmatch(v)),
                      prefix=f"files.{name}.")


def check_manifest(manifest: Any, manifest_path: Path) -> int:
    """Check a parsed manifest (checksum and every key); returns its format version."""
    return ManifestChecker(manifest_path).check(manifest)


__all__ = [
    "ARRAY_FILES",
    "BANK_FORMAT_VERSION",
    "DIGEST_KEY",
    "FORMAT_NAME",
    "INDEX_FILE",
    "LEGACY_FORMAT_VERSIONS",
    "ManifestChecker",
    "SOURCE_KEYS",
    "check_manifest",
    "describe_value",
    "is_int",
    "is_number",
    "manifest_digest",
]
